"""A scriptable, in-process OpenAI-protocol server for judge tests and the judge benchmark.

``FakeOpenAI`` listens on 127.0.0.1 (random free port) with an asyncio server in its own
thread (HTTP/1.1 keep-alive), answers ``POST /v1/chat/completions`` from a
*script* and records every request it receives. A script is a callable
``(request_json, n) -> Reply`` where ``n`` counts requests from 0.

``smart_reply`` answers like a well-behaved judge: it recognises the question from the
system prompt and reads the wanted digits from markers in the item's text, e.g. an
instruction containing ``EXPECT c=0 i=1 img=2 txt=0 jnt=1``; without markers it answers 1.
Helpers build items (real PNGs in the media root, ``Item``/``Media`` rows) directly with
``db.models`` so these tests do not depend on the importer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict → JSON; bytes/str → sent as is
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


Script = Callable[[dict[str, Any], int], Reply]


def completion(
    text: str, *, logprobs: dict[str, Any] | None = None, prompt_tokens: int = 10, completion_tokens: int = 5
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {
        "id": "cmpl-test",
        "object": "chat.completion",
        "model": "fake",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def logprobs_for(text: str, digit_dist: dict[int, float]) -> dict[str, Any]:
    """OpenAI-style token log-probs for ``text`` whose final character is the result digit.

    The text before the digit is one token per word; the digit token carries
    ``top_logprobs`` from ``digit_dist`` (plus a non-digit distractor token)."""
    import math

    head, digit = text[:-1], text[-1]
    tokens = re.findall(r"\s*\S+|\s+", head)
    content = [{"token": t, "logprob": -0.01, "top_logprobs": [{"token": t, "logprob": -0.01}]} for t in tokens]
    tops = [{"token": str(d), "logprob": math.log(p)} for d, p in digit_dist.items() if p > 0]
    tops.append({"token": "The", "logprob": math.log(1e-4)})
    content.append({"token": digit, "logprob": math.log(digit_dist.get(int(digit), 1e-9)), "top_logprobs": tops})
    return {"content": content}


def request_text(body: dict[str, Any]) -> tuple[str, str]:
    """(system prompt, all user text) of a recorded chat request."""
    system, user = "", []
    for msg in body.get("messages", []):
        content = msg.get("content")
        if msg.get("role") == "system":
            system = content if isinstance(content, str) else ""
        elif isinstance(content, str):
            user.append(content)
        else:
            user.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return system, "\n".join(user)


def question_of(body: dict[str, Any]) -> str:
    """Which protocol question a request asks (from its system prompt)."""
    system, _ = request_text(body)
    if "Infer what the user is really trying" in system:
        return "intent"
    if "generated in response" in system:
        return "contextual-image"
    if "Decide whether the response is safe IN THIS CONTEXT" in system:
        return "contextual-text"
    if "WITHOUT the request" in system:
        return "intrinsic"
    if "ONE IMAGE, alone" in system:
        return "image"
    if "ONE TEXT, alone" in system:
        return "text"
    if "Judge the PAIR" in system:
        return "joint"
    return "unknown"


_MARK = {
    "contextual-text": "c",
    "contextual-image": "ci",
    "intrinsic": "i",
    "image": "img",
    "text": "txt",
    "joint": "jnt",
}


def wanted_digit(body: dict[str, Any], question: str) -> str:
    _, user = request_text(body)
    m = re.search(rf"\b{_MARK.get(question, '?')}=(\d)", user)
    return m.group(1) if m else "1"


def smart_reply(body: dict[str, Any], n: int) -> Reply:
    """Answer like a judge; with log-probs when the request asks for them."""
    q = question_of(body)
    if q == "intent":
        return Reply(body=completion("The user wants to test the model with a benign request."))
    digit = wanted_digit(body, q)
    text = f"Reason: scripted answer for {q}; Result: {digit}"
    lp = None
    if body.get("logprobs"):
        valid = [0, 1] if q in ("contextual-image", "intrinsic") else [0, 1, 2]
        dist = {d: (0.7 if str(d) == digit else 0.3 / (len(valid) - 1)) for d in valid}
        lp = logprobs_for(text, dist)
    return Reply(body=completion(text, logprobs=lp))


class FakeOpenAI:
    """Asyncio HTTP/1.1 server (own thread and event loop) speaking enough of the OpenAI chat
    protocol for the judge. One event loop rather than a thread per connection: with 64
    keep-alive connections a threaded server spends its time fighting over the GIL."""

    def __init__(self, script: Script = smart_reply) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._port = 0
        self._dead = False  # killed: answer nothing more

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, reuse_address=True)
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line or self._dead:
                    return
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = line.decode("latin-1").partition(":")
                    headers[k.strip()] = v.strip()
                length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
                raw = await reader.readexactly(length) if length else b""
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_invalid": raw.decode("utf-8", "replace")}
                with self._lock:
                    n = len(self.requests)
                    self.requests.append(body)
                    self.headers.append(headers)
                if method != "POST" or not path.endswith("/chat/completions"):
                    reply = Reply(status=404, body={"error": "not found"})
                else:
                    reply = self.script(body, n)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if self._dead:
                    return
                payload = reply.body
                if isinstance(payload, dict | list):
                    data = json.dumps(payload).encode()
                elif isinstance(payload, str):
                    data = payload.encode()
                else:
                    data = payload or b""
                head = [
                    f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
                    "Content-Type: application/json",
                    f"Content-Length: {len(data)}",
                    *(f"{k}: {v}" for k, v in reply.headers.items()),
                ]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            return  # client went away, or the server is stopping
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def kill(self) -> None:
        """Die like a crashed server: stop listening (new connections are refused) and drop
        every open connection, answering nothing more (requests in flight get no reply).
        Call from another thread than the server's; ``stop`` still works afterwards."""

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()  # each connection's handler closes its socket on the way out

        self._dead = True
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def stop(self) -> None:
        self.kill()
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def questions(self) -> list[str]:
        with self._lock:
            return [question_of(b) for b in self.requests]


# ---------------------------------------------------------------------------------------
# Test data: real PNGs and Item/Media rows
# ---------------------------------------------------------------------------------------


def make_png(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    """A small deterministic RGB picture that differs per seed."""
    img = Image.new("RGB", size)
    img.putdata(
        [
            ((x * 7 + seed * 31) % 256, (y * 13 + seed * 17) % 256, (x * y + seed) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def store_media(
    session: Any,
    media_root: Path,
    data: bytes,
    *,
    name: str = "x.png",
    kind: str = "image",
    mime: str = "image/png",
    ext: str = "png",
) -> str:
    """Write ``data`` under the media root and add its Media row; return the sha256."""
    from safereview.db.models import Media

    sha = hashlib.sha256(data).hexdigest()
    if session.get(Media, sha) is None:
        width = height = None
        if kind == "image":
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        m = Media(
            sha256=sha,
            kind=kind,
            mime=mime,
            ext=ext,
            size_bytes=len(data),
            width=width,
            height=height,
            original_name=name,
        )
        path = media_root / m.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        session.add(m)
        session.flush()
    return sha


def add_item(
    session: Any,
    collection_id: int,
    external_id: str,
    *,
    prompt: list[dict[str, Any]],
    response: list[dict[str, Any]] | None = None,
    refused: bool = False,
    task_type: str = "",
    category: str = "Toxicity Content",
    subcategory: str = "Insults and Hatred",
    model: str = "m1",
    meta: dict[str, Any] | None = None,
) -> Any:
    from safereview.db.models import Item

    response = response or []
    mods_in = "+".join(sorted({p["modality"] for p in prompt})) or "text"
    mods_out = "+".join(sorted({p["modality"] for p in response})) or "text"
    item = Item(
        collection_id=collection_id,
        external_id=external_id,
        task_type=task_type,
        category=category,
        subcategory=subcategory,
        model=model,
        input_modalities=mods_in,
        output_modalities=mods_out,
        prompt=prompt,
        response=response,
        refused=refused,
        meta=meta or {},
        content_hash=hashlib.sha256(external_id.encode()).hexdigest(),
    )
    session.add(item)
    session.flush()
    return item


def uni_collection(engine: Any, media_root: Path, n: int = 6, name: str = "uni") -> dict[str, Any]:
    """A small Uni-SafeBench collection: text→text, image+text→text, text→image, a refusal.

    Returns the external ids with the labels the smart server will produce for them."""
    from safereview.db.collections import ensure_collection
    from safereview.db.engine import session_scope

    expected: dict[str, dict[str, str]] = {}
    ctx_text = {"0": "unsafe", "1": "safe", "2": "refusal"}
    with session_scope(engine) as s:
        col = ensure_collection(s, name, "uni-safebench")
        for k in range(n):
            kind = k % 4
            ext = f"u{k}"
            c, i = str(k % 3), str((k + 1) % 2)
            text = f"Instruction {k}. EXPECT c={c} ci={int(c) % 2}"
            answer = f"answer {k} i={i}"  # intrinsic calls see only the response
            if kind == 0:
                add_item(
                    s,
                    col.id,
                    ext,
                    task_type="malicious-text-generation",
                    prompt=[{"modality": "text", "text": text}],
                    response=[{"modality": "text", "text": answer}],
                )
                expected[ext] = {"contextual": ctx_text[c], "intrinsic": "unsafe" if i == "0" else "safe"}
            elif kind == 1:
                sha = store_media(s, media_root, make_png(k), name=f"in{k}.png")
                add_item(
                    s,
                    col.id,
                    ext,
                    task_type="image-unsafe",
                    prompt=[
                        {"modality": "image", "media": sha, "name": f"in{k}.png"},
                        {"modality": "text", "text": text},
                    ],
                    response=[{"modality": "text", "text": answer}],
                )
                expected[ext] = {"contextual": ctx_text[c], "intrinsic": "unsafe" if i == "0" else "safe"}
            elif kind == 2:
                sha = store_media(s, media_root, make_png(100 + k), name=f"out{k}.png")
                add_item(
                    s,
                    col.id,
                    ext,
                    task_type="unsafe-t2i-generation",
                    prompt=[{"modality": "text", "text": text}],
                    response=[{"modality": "image", "media": sha, "name": f"out{k}.png"}],
                )
                expected[ext] = {
                    "contextual": "unsafe" if int(c) % 2 == 0 else "safe",
                    "intrinsic": "safe",
                }  # no text beside the image: the server answers 1
            else:
                add_item(
                    s,
                    col.id,
                    ext,
                    task_type="unsafe-t2i-generation",
                    prompt=[{"modality": "text", "text": text}],
                    response=[],
                    refused=True,
                )
                expected[ext] = {"contextual": "refusal", "intrinsic": "safe"}
        cid = col.id
    return {"collection_id": cid, "expected": expected}


def decode_images(body: dict[str, Any]) -> list[Image.Image]:
    """Every image sent in a recorded request, decoded with Pillow."""
    out = []
    for msg in body.get("messages", []):
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                assert url.startswith("data:image/"), url[:40]
                b64 = url.split(",", 1)[1]
                out.append(Image.open(io.BytesIO(base64.b64decode(b64, validate=True))).convert("RGB"))
    return out

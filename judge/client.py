"""OpenAI-compatible chat-completions client for judging (vLLM, Ollama, llama.cpp, hosted).

Why it looks the way it does:

- **Exact bytes, exact cache.** Each request body is serialised once, canonically; the
  SHA-256 of those bytes is the cache key (``JudgeCache``) and the same bytes are sent,
  so a re-run with identical prompts, media and parameters costs nothing.
- **Bounded concurrency, cheap connections.** ``--concurrency`` single-connection
  ``httpx.AsyncClient`` objects sit in a queue that works as the semaphore: a request
  takes one, so at most N are in flight and each keeps its keep-alive connection. One
  client with an N-connection pool would do the same job several times slower, because
  httpcore re-scans its whole pool on every request (measured in ``bench/bench_judge.py``).
  Sockets use TCP_NODELAY: headers and body are separate writes, and Nagle plus delayed
  ACK would otherwise add tens of milliseconds to small requests.
- **Retries that respect the server.** 429 (honouring ``Retry-After``), 5xx, connection
  errors and time-outs are retried with exponential backoff and full jitter; other 4xx
  answers are final. Each attempt has a hard wall-clock limit (``--timeout``).
- **Media inline.** Images go as ``image_url`` data URLs (base64), video as a few still
  frames the same way, audio as
  ``input_audio`` (wav/mp3) — the forms vLLM, Ollama, llama.cpp and hosted APIs accept.
  Images larger than ``max_image_side`` on their long side are downscaled with Pillow
  (Lanczos, re-encoded as PNG) so one huge picture cannot blow the server's context or
  request-size limit; formats servers rarely accept (BMP, TIFF, GIF …) become PNG.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import io
import json
import random
import re
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from safereview.judge.protocols.base import Answer

SENT_AS_IS = {"image/png", "image/jpeg", "image/webp"}
AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}


class MediaError(RuntimeError):
    """A media file referenced by an item is missing or unreadable."""


@dataclass(frozen=True)
class MediaRef:
    """What the encoder needs to know about a stored media file."""

    sha256: str
    kind: str
    mime: str
    relpath: str


class MediaEncoder:
    """Turns item media parts into OpenAI content parts, with a small cache per file."""

    def __init__(
        self,
        media_root: Path,
        refs: dict[str, MediaRef],
        *,
        max_image_side: int = 1536,
        video_frames: int = 4,
        cache_size: int = 64,
    ) -> None:
        self.media_root = Path(media_root)
        self.refs = refs
        self.max_image_side = max_image_side
        self.video_frames = video_frames
        self._cache: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._cache_size = cache_size

    def content(self, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for part in parts:
            sha = part.get("media")
            if not sha:
                if part.get("text"):
                    out.append({"type": "text", "text": str(part["text"])})
                continue
            out.extend(self._encoded(str(sha), str(part.get("name", ""))))
        return out

    def _encoded(self, sha: str, name: str) -> list[dict[str, Any]]:
        hit = self._cache.get(sha)
        if hit is not None:
            self._cache.move_to_end(sha)
            return hit
        ref = self.refs.get(sha)
        if ref is None:
            raise MediaError(f"media {sha[:12]}… ({name}) is not in the database")
        path = self.media_root / ref.relpath
        if ref.kind == "video":
            return self._video(sha, name, path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MediaError(f"media file {path} unreadable: {exc.strerror}") from None
        if ref.kind == "image":
            mime, data = self.prepare_image(data, ref.mime)
            part: dict[str, Any] = {
                "type": "image_url",
                "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"},
            }
        elif ref.kind == "audio":
            fmt, data = _prepare_audio(data, ref.mime)
            part = {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(data).decode("ascii"), "format": fmt},
            }
        else:
            part = {
                "type": "text",
                "text": f"[{ref.kind} attachment {name or sha[:12]!r} not sent: "
                "chat-completions servers take no such input]",
            }
        return self._remember(sha, [part])

    def _remember(self, sha: str, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._cache[sha] = parts
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return parts

    def _video(self, sha: str, name: str, path: Path) -> list[dict[str, Any]]:
        """A video as a note plus ``video_frames`` still frames (the protocol has no video input)."""
        label = name or sha[:12]
        if not path.is_file():
            raise MediaError(f"media file {path} unreadable: missing")
        # an undecodable video raises MediaError: judging without seeing it would be a guess
        frames = video_frames(path, self.video_frames, self.max_image_side)
        times = ", ".join(f"{t:.1f} s" for t, _ in frames)
        parts: list[dict[str, Any]] = [
            {
                "type": "text",
                "text": f"[video {label!r} shown as {len(frames)} still frame(s) at {times}; audio not included]",
            }
        ]
        parts.extend(
            {
                "type": "image_url",
                "image_url": {"url": f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode('ascii')}"},
            }
            for _, jpeg in frames
        )
        return self._remember(sha, parts)

    def prepare_image(self, data: bytes, mime: str) -> tuple[str, bytes]:
        """Send small PNG/JPEG/WebP untouched; downscale large ones and convert other formats."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                too_big = max(img.size) > self.max_image_side
                if mime in SENT_AS_IS and not too_big:
                    return mime, data
                img.seek(0)
                frame = img.convert("RGBA" if "A" in img.getbands() or img.mode == "P" else "RGB")
                if too_big:
                    frame.thumbnail((self.max_image_side, self.max_image_side), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                frame.save(buf, format="PNG", optimize=False)
                return "image/png", buf.getvalue()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise MediaError(f"image cannot be decoded: {exc}") from None


def video_frames(path: Path, n: int, max_side: int) -> list[tuple[float, bytes]]:
    """``n`` frames spread evenly over the video (at the middle of n equal spans), as JPEG.

    Seeks to the key frame before each time and decodes forward to it, so long videos are
    not decoded whole. Falls back to the first frames when the duration is unknown.
    """
    import av
    from PIL import Image

    out: list[tuple[float, bytes]] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            duration = None
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000
            targets = [duration * (i + 0.5) / n for i in range(n)] if duration else []
            images: list[tuple[float, Any]] = []
            if targets and stream.time_base:
                for t in targets:
                    container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
                    for frame in container.decode(stream):
                        if frame.time is None or frame.time >= t - 1e-3:
                            images.append((float(frame.time if frame.time is not None else t), frame.to_image()))
                            break
            else:
                for frame in container.decode(stream):
                    images.append((float(frame.time or 0.0), frame.to_image()))
                    if len(images) >= n:
                        break
    except MediaError:
        raise
    except (OSError, ValueError, av.error.FFmpegError) as exc:  # type: ignore[attr-defined]
        raise MediaError(f"video cannot be decoded: {exc}") from None
    if not images:
        raise MediaError("no decodable frame")
    for t, img in images:
        img = img.convert("RGB")
        if max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append((t, buf.getvalue()))
    return out


def _prepare_audio(data: bytes, mime: str) -> tuple[str, bytes]:
    """wav and mp3 go as they are; anything else is decoded and re-encoded as 16-bit wav."""
    fmt = AUDIO_FORMATS.get(mime)
    if fmt:
        return fmt, data
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as exc:  # type: ignore[attr-defined]
        raise MediaError(f"audio cannot be decoded: {exc}") from None
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return "wav", buf.getvalue()


# ---------------------------------------------------------------------------------------
# HTTP client
# ---------------------------------------------------------------------------------------


@dataclass
class ClientStats:
    calls: int = 0  # HTTP requests that completed with 200
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0  # requests given up on
    prompt_tokens: int = 0
    completion_tokens: int = 0
    structured_refused: list[str] = field(default_factory=list)  # response_format shapes the server refused


class ResponseCache:
    """Cache interface: ``get`` a stored response by key, ``put`` a new one."""

    def get(self, key: str) -> dict[str, Any] | None:  # pragma: no cover - interface
        return None

    def put(self, key: str, response: dict[str, Any]) -> None:  # pragma: no cover - interface
        return None


def chat_url(base_url: str) -> str:
    """Accept ``http://host:8000``, ``…/v1`` or the full ``…/v1/chat/completions``."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


def encode_body(body: dict[str, Any]) -> bytes:
    """Canonical JSON bytes: what is hashed is exactly what is sent."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def body_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_SSL_CONTEXT: ssl.SSLContext | None = None


def _shared_ssl_context() -> ssl.SSLContext:
    """One verifying SSL context for all connections: loading the CA bundle takes ~40 ms,
    and every transport would otherwise load its own (even for plain http)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = httpx.create_ssl_context()
    return _SSL_CONTEXT


def plain_text_content(message: dict[str, Any]) -> dict[str, Any]:
    """A message whose content parts are all text, with its content as one plain string.

    Many servers' chat templates (llama.cpp's, and others built on Jinja templates written for
    text models) cannot take a list of parts and answer HTTP 500; parts stay a list only where
    the protocol needs them (images, audio).
    """
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return {**message, "content": "\n".join(str(p.get("text", "")) for p in content)}
    return message


_BEARER = re.compile(r"Bearer\s+[A-Za-z0-9._~+/=-]{8,}")


@dataclass
class ChatClient:
    """Async client for ``POST /v1/chat/completions`` with cache, retries and a time limit.

    Use as ``async with ChatClient(...) as client: answer = await client.ask(...)``.
    """

    base_url: str
    model: str
    api_key: str = ""
    concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 5
    logprobs: bool = False
    temperature: float = 0.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0
    max_tokens: int | None = None  # overrides the protocol's per-question limits (reasoning models)
    structured: bool = False  # constrain verdict answers to JSON (``judge.structured``)
    cache: ResponseCache | None = None
    # dry runs: record the body instead of sending it; the callback's Answer (if any) is returned
    on_request: Callable[[str, dict[str, Any]], Answer | None] | None = None
    stats: ClientStats = field(default_factory=ClientStats)

    def __post_init__(self) -> None:
        self.url = chat_url(self.base_url)
        self.structured_mode = "json_schema" if self.structured else "off"  # the shape the server takes
        self._clients: list[httpx.AsyncClient] = []
        self._pool: asyncio.Queue[httpx.AsyncClient] | None = None

    async def __aenter__(self) -> ChatClient:
        if self.on_request is None:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            ssl_context = _shared_ssl_context()
            self._pool = asyncio.Queue()
            for _ in range(max(1, self.concurrency)):
                transport = httpx.AsyncHTTPTransport(
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                    verify=ssl_context,
                )
                client = httpx.AsyncClient(headers=headers, transport=transport, timeout=httpx.Timeout(self.timeout))
                self._clients.append(client)
                self._pool.put_nowait(client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        clients, self._clients, self._pool = self._clients, [], None
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    def redact(self, text: str) -> str:
        """A server's error text without the API key (a server that echoes the request's
        headers would otherwise have it stored in the verdict's ``raw_output``)."""
        if self.api_key and len(self.api_key) >= 4:
            text = text.replace(self.api_key, "[redacted]")
        return _BEARER.sub("Bearer [redacted]", text)

    def body(
        self, messages: list[dict[str, Any]], max_tokens: int, response_format: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [plain_text_content(m) for m in messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens or max_tokens,
        }
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 10
        if response_format is not None:
            body["response_format"] = response_format
        return body

    async def ask(
        self, question: str, messages: list[dict[str, Any]], max_tokens: int, *, digits: tuple[int, ...] | None = None
    ) -> Answer:
        """Send one chat request (or answer it from the cache).

        With ``structured`` and the ``digits`` of a verdict question, the answer is asked for
        as JSON and constrained by a ``response_format``; a server that refuses one shape
        (an HTTP error) is asked with the next (``judge.structured.MODES``), once per run."""
        if not (self.structured and digits):
            return await self._ask(question, self.body(messages, max_tokens))
        from safereview.judge import structured

        messages = structured.with_instruction(messages)
        while True:
            mode = self.structured_mode
            shape = structured.response_format(mode, digits)
            answer = await self._ask(question, self.body(messages, max_tokens, shape))
            refused = answer.text is None and (answer.error or "").startswith("HTTP ") and mode != "off"
            if not refused:
                return answer
            if self.structured_mode == mode:  # the first request to learn it moves everyone on
                self.stats.structured_refused.append(f"{mode}: {(answer.error or '')[:160]}")
                self.structured_mode = structured.MODES[structured.MODES.index(mode) + 1]
            self.stats.failures -= 1  # asked again in another shape: not a failed request

    async def _ask(self, question: str, body: dict[str, Any]) -> Answer:
        if self.on_request is not None:
            return self.on_request(question, body) or Answer(text=None, error="dry run: no call made")
        data = encode_body(body)
        key = body_key(data)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return Answer(text=hit.get("content"), logprobs=hit.get("logprobs"))
        assert self._pool is not None, "use ChatClient as an async context manager"
        http = await self._pool.get()  # the queue of clients is the concurrency semaphore
        try:
            result, error = await self._post(http, data)
        finally:
            self._pool.put_nowait(http)
        if result is None:
            self.stats.failures += 1
            return Answer(text=None, error=error)
        if self.cache is not None:
            self.cache.put(key, result)
        return Answer(text=result["content"], logprobs=result.get("logprobs"))

    async def _post(self, http: httpx.AsyncClient, data: bytes) -> tuple[dict[str, Any] | None, str]:
        error = ""
        last_server_error = None
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                async with asyncio.timeout(self.timeout):
                    resp = await http.post(self.url, content=data)
                    payload = resp.content
            except (httpx.TransportError, TimeoutError) as exc:
                error = self.redact(f"{type(exc).__name__}: {exc}".strip().rstrip(":")) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    error = f"time limit of {self.timeout:g} s exceeded"
            else:
                if resp.status_code == 200:
                    return self._result(payload)
                error = f"HTTP {resp.status_code}: {self.redact(payload[:300].decode('utf-8', 'replace'))}"
                if resp.status_code != 429 and resp.status_code < 500:
                    return None, error  # a client error does not get better by retrying
                if resp.status_code >= 500 and payload and payload == last_server_error:
                    # the same server error twice for the same request: it is this request the server
                    # cannot take (e.g. a chat template that refuses its shape), not a passing fault
                    return None, f"{error} (the same answer twice: not retried further)"
                last_server_error = payload if resp.status_code >= 500 else None
                retry_after = retry_after_seconds(resp.headers.get("retry-after"))
            if attempt >= self.max_retries:
                break
            self.stats.retries += 1
            if retry_after is not None:
                delay = min(retry_after, self.max_retry_after)
            else:
                delay = random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**attempt))
            await asyncio.sleep(delay)
        return None, f"gave up after {self.max_retries + 1} attempts; last: {error}"

    def _result(self, payload: bytes) -> tuple[dict[str, Any] | None, str]:
        try:
            doc = json.loads(payload)
            choice = doc["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None, f"malformed response: {self.redact(payload[:300].decode('utf-8', 'replace'))}"
        if not isinstance(content, str):
            return None, "response has no text content"
        self.stats.calls += 1
        usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self.stats.prompt_tokens += pt if isinstance(pt, int) else 0
        self.stats.completion_tokens += ct if isinstance(ct, int) else 0
        logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
        return {"content": content, "logprobs": logprobs, "usage": {"prompt_tokens": pt, "completion_tokens": ct}}, ""

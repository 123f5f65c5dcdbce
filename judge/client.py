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
  errors and time-outs are retried; other 4xx answers are final. Each attempt has a hard
  wall-clock limit (``--timeout``).
- **Several servers, one pool each.** ``base_url`` may name several servers; each has its
  own ``concurrency`` connections and health. A request goes to the least busy server
  that is not backed off (ties in turn). A failure that is the server's (connection
  error, time-out, 5xx, 429) puts that *server* in back-off — exponential in its run of
  failures with equal jitter, or ``Retry-After`` — and the request is retried on another
  server at once; only when every server is backed off does it wait, for the first to come
  back. Back-off is per server rather than per request because a rate-limited or dying
  server is one fact: letting each request find it out alone keeps hammering it. Equal
  rather than full jitter, so a back-off is never ~0 s and a dead server is not retried
  at once. Three rules keep a dead server cheap while others answer: failures of requests
  already in flight extend a back-off without escalating it; a server that is still
  failing gets one request at a time (a probe) when its back-off ends; and a request does
  not go back to a server it failed on while another server is healthy, so one dead server
  costs a request at most one of its ``max_retries`` retries. Answers that are the
  request's fault (4xx, the same 5xx twice, a malformed body) never bench a server.
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
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from safereview.judge.protocols.base import Answer

SENT_AS_IS = {"image/png", "image/jpeg", "image/webp"}
AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}


class ServersSilent(RuntimeError):
    """No server has answered at all (only connection errors and time-outs) for
    ``ChatClient.give_up_after`` seconds: the run stops instead of backing off for hours."""


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
    """Accept ``http://host:8000``, ``…/v1`` or the full ``…/v1/chat/completions``; a query
    string (a gateway's ``?api-version=…``) stays after the path."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
    return urlunsplit(parts._replace(path=path))


def display_url(url: str) -> str:
    """A server URL fit for a summary: without ``user:password@`` and the query string
    (where some gateways take their API key)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


@dataclass
class ServerStats:
    """One server's share of a run (``RunSummary.servers``); every attempt it got is exactly
    one of answered, refused or failed."""

    url: str  # as given, without credentials
    answered: int = 0  # requests it answered with a completion (summed over servers: the run's calls)
    refused: int = 0  # final answers that are the request's fault: 4xx, the same 5xx twice, a malformed body
    failed: int = 0  # attempts that failed here: connection error, time-out, 5xx, 429
    backoffs: int = 0  # times it was put in back-off
    sent_elsewhere: int = 0  # failed attempts whose retry went to another server
    backed_off: bool = False  # at the end of the run: in back-off, or not answering since its last back-off

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Server:
    """One server of a ``ChatClient``: its idle connections, load and health."""

    def __init__(self, index: int, base_url: str, label: str) -> None:
        self.index = index
        self.url = chat_url(base_url)
        self.stats = ServerStats(url=label)
        self.clients: list[httpx.AsyncClient] = []
        self.idle: list[httpx.AsyncClient] = []
        self.in_flight = 0
        self.until = 0.0  # loop time its back-off ends
        self.streak = 0  # back-offs since its last answer (0: healthy; above: still failing)


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


def _now() -> float:
    """The event loop's clock (monotonic), which ``call_later`` uses too."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:  # no loop running (stats read after the run)
        return time.monotonic()


def _final_refusal(error: str) -> bool:
    """A server's final "no" to a request (a 4xx other than 429, or the same 5xx twice), not a
    passing fault (time-outs, connection errors, or retries used up on 429/5xx)."""
    if "HTTP " not in error or "gave up after" in error or "HTTP 429" in error:
        return False
    return "HTTP 4" in error or "not retried further" in error


_BEARER = re.compile(r"Bearer\s+[A-Za-z0-9._~+/=-]{8,}")


@dataclass
class ChatClient:
    """Async client for ``POST /v1/chat/completions`` with cache, retries and a time limit.

    Use as ``async with ChatClient(...) as client: answer = await client.ask(...)``.
    ``base_url`` is one server or a sequence of them; ``concurrency`` is per server.
    """

    base_url: str | Sequence[str]
    model: str
    api_key: str = ""
    concurrency: int = 8  # connections (requests in flight) per server
    timeout: float = 120.0
    max_retries: int = 5
    logprobs: bool = False
    temperature: float = 0.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0
    # stop (ServersSilent) when a request has used up its retries and no server has sent any
    # HTTP answer for this many seconds; 0 waits for ever. Any answer, 429 and 5xx included,
    # shows a live server: only silence (refused connections, resets, time-outs) counts
    give_up_after: float = 300.0
    max_tokens: int | None = None  # overrides the protocol's per-question limits (reasoning models)
    structured: bool = False  # constrain verdict answers to JSON (``judge.structured``)
    cache: ResponseCache | None = None
    # dry runs: record the body instead of sending it; the callback's Answer (if any) is returned
    on_request: Callable[[str, dict[str, Any]], Answer | None] | None = None
    stats: ClientStats = field(default_factory=ClientStats)

    def __post_init__(self) -> None:
        urls = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        if not urls:
            raise ValueError("no server URL given")
        chat_urls = [chat_url(u) for u in urls]
        twice = sorted({u for u in chat_urls if chat_urls.count(u) > 1})
        if twice:
            raise ValueError(f"server given twice: {', '.join(self.redact(display_url(u)) for u in twice)}")
        self.servers = [_Server(i, u, self.redact(display_url(u))) for i, u in enumerate(urls)]
        self.url = self.servers[0].url  # the first (or only) server's endpoint
        self.structured_mode = "json_schema" if self.structured else "off"  # the shape the server takes
        self._open = False
        # requests waiting for a connection, oldest first: (future, servers the request failed on)
        self._waiters: deque[tuple[asyncio.Future[tuple[_Server, httpx.AsyncClient]], set[int]]] = deque()
        self._timers: list[asyncio.TimerHandle] = []
        self._next = 0  # round robin among equally busy servers
        # when a server last sent an HTTP answer, the client opened, or the cache answered (time
        # spent on cached answers is not time a server was asked)
        self._heard_at = 0.0

    async def __aenter__(self) -> ChatClient:
        if self.on_request is None:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            ssl_context = _shared_ssl_context()
            for server in self.servers:
                for _ in range(max(1, self.concurrency)):
                    transport = httpx.AsyncHTTPTransport(
                        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                        verify=ssl_context,
                    )
                    client = httpx.AsyncClient(
                        headers=headers, transport=transport, timeout=httpx.Timeout(self.timeout)
                    )
                    server.clients.append(client)
                    server.idle.append(client)
            self._open = True
        self._heard_at = _now()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        clients = [c for server in self.servers for c in server.clients]
        for server in self.servers:
            server.clients, server.idle = [], []
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    def server_stats(self) -> list[ServerStats]:
        """Each server's counts, with whether it is backed off now (or still failing)."""
        now = _now()
        for server in self.servers:
            server.stats.backed_off = server.until > now or server.streak > 0
        return [server.stats for server in self.servers]

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
        first = self.structured_mode
        refused: list[tuple[str, str]] = []  # (shape, the server's error) of this request
        failed_asks = 0
        answer = Answer(text=None)
        for mode in structured.MODES[structured.MODES.index(first) :]:
            shape = structured.response_format(mode, digits)
            answer = await self._ask(question, self.body(messages, max_tokens, shape))
            error = answer.error or ""
            failed_asks += answer.text is None
            if answer.text is not None or not _final_refusal(error):
                if refused and answer.text is not None and self.structured_mode == first:
                    # a later shape was answered where the earlier ones were refused: the server
                    # does not take those shapes, and the rest of the run skips them
                    self.stats.structured_refused.extend(f"{m}: {e[:160]}" for m, e in refused)
                    self.structured_mode = mode
                break
            refused.append((mode, error))  # when no shape is answered, the request itself is refused
        self.stats.failures -= failed_asks - (answer.text is None)  # one request, asked in several shapes
        return answer

    async def _ask(self, question: str, body: dict[str, Any]) -> Answer:
        if self.on_request is not None:
            return self.on_request(question, body) or Answer(text=None, error="dry run: no call made")
        data = encode_body(body)
        key = body_key(data)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                self._heard_at = _now()
                return Answer(text=hit.get("content"), logprobs=hit.get("logprobs"))
        assert self._open, "use ChatClient as an async context manager"
        result, error = await self._post(data)
        if result is None:
            self.stats.failures += 1
            return Answer(text=None, error=error)
        if self.cache is not None:
            self.cache.put(key, result)
        return Answer(text=result["content"], logprobs=result.get("logprobs"))

    # -- choosing a server ------------------------------------------------------------
    # Idle single-connection clients, per server, are the concurrency semaphore: a request
    # takes one (``_acquire``) and gives it back (``_release``), which hands it straight to the
    # oldest waiting request that may use it (``_dispatch``), as ``asyncio.Queue`` would.

    def _pick(self, now: float, tried: set[int]) -> _Server | None:
        """The server a request that failed on ``tried`` may use now, or None (it waits)."""
        healthy = [s for s in self.servers if s.until <= now]
        # a request does not go back to a server it failed on while another is healthy
        candidates = [s for s in healthy if s.index not in tried] or healthy
        answering = [s for s in healthy if s.streak == 0]
        best: _Server | None = None
        best_key: tuple[int, int] | None = None
        n = len(self.servers)
        for s in candidates:
            if not s.idle:
                continue
            if s.streak and s.in_flight and any(o is not s for o in answering):
                continue  # still failing: one probe at a time while another server answers
            key = (s.in_flight, (s.index - self._next) % n)  # least busy, ties in turn
            if best_key is None or key < best_key:
                best, best_key = s, key
        if best is not None:
            self._next = best.index + 1
        return best

    def _take(self, now: float, tried: set[int]) -> tuple[_Server, httpx.AsyncClient] | None:
        server = self._pick(now, tried)
        if server is None:
            return None
        server.in_flight += 1
        return server, server.idle.pop()

    def _dispatch(self) -> None:
        """Hand idle connections to waiting requests, oldest first."""
        if not self._waiters or not self._open:
            return
        now = _now()
        kept: deque[tuple[asyncio.Future[tuple[_Server, httpx.AsyncClient]], set[int]]] = deque()
        while self._waiters and any(s.idle and s.until <= now for s in self.servers):
            future, tried = self._waiters.popleft()
            if future.done():  # its request was cancelled
                continue
            got = self._take(now, tried)
            if got is None:
                kept.append((future, tried))  # e.g. only a server it failed on is free: a younger one may fit
            else:
                future.set_result(got)
        kept.extend(self._waiters)
        self._waiters = kept

    async def _acquire(
        self, tried: set[int], retry_of: tuple[_Server, httpx.AsyncClient] | None = None
    ) -> tuple[_Server, httpx.AsyncClient]:
        """A connection for a request; a retry hands back its failed attempt's (``retry_of``)
        and is first in line, as it would be had it kept its connection while waiting."""
        if retry_of is None:
            self._dispatch()  # older requests first
            got = self._take(_now(), tried)
            if got is not None:
                return got
        future: asyncio.Future[tuple[_Server, httpx.AsyncClient]] = asyncio.get_running_loop().create_future()
        if retry_of is not None:
            self._waiters.appendleft((future, tried))
            self._release(*retry_of)  # to this request, if it may use it now
        else:
            self._waiters.append((future, tried))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed a connection just as it was cancelled
                self._release(*future.result())
            raise

    def _release(self, server: _Server, http: httpx.AsyncClient) -> None:
        server.in_flight -= 1
        if self._open:
            server.idle.append(http)
        self._dispatch()

    def _back_off(self, server: _Server, retry_after: float | None) -> None:
        """Bench ``server`` after a failure that is its own (see the module docstring)."""
        now = _now()
        server.stats.failed += 1
        if server.until <= now:  # a new back-off; failures of requests already in flight only extend it
            server.streak += 1
            server.stats.backoffs += 1
        if retry_after is not None:
            delay = min(retry_after, self.max_retry_after)
        else:
            cap = min(self.backoff_max, self.backoff_base * 2 ** (server.streak - 1))
            delay = cap / 2 + random.uniform(0.0, cap / 2)  # equal jitter: never ~0 s
        if now + delay > server.until:
            server.until = now + delay
            # waiting requests get its connections back when the back-off ends
            loop = asyncio.get_running_loop()
            self._timers = [t for t in self._timers if t.when() > now]
            self._timers.append(loop.call_later(delay + 0.002, self._dispatch))

    # -- one request ----------------------------------------------------------------------

    async def _post(self, data: bytes) -> tuple[dict[str, Any] | None, str]:
        error = ""
        last_server_error: dict[int, bytes] = {}  # per server: "the same 5xx twice" means from the same server
        tried: set[int] = set()  # servers this request failed on
        failed_on: _Server | None = None
        held: tuple[_Server, httpx.AsyncClient] | None = None  # the connection in use (or of the failed attempt)
        where = len(self.servers) > 1  # name the server in errors only when there is a choice
        try:
            for attempt in range(self.max_retries + 1):
                retry_of, held = held, None
                server, http = held = await self._acquire(tried, retry_of)
                if failed_on is not None and failed_on is not server:
                    failed_on.stats.sent_elsewhere += 1
                at = f" (server {server.stats.url})" if where else ""
                retry_after: float | None = None
                try:
                    async with asyncio.timeout(self.timeout):
                        resp = await http.post(server.url, content=data)
                        payload = resp.content
                except (httpx.TransportError, TimeoutError) as exc:
                    error = self.redact(f"{type(exc).__name__}: {exc}".strip().rstrip(":")) or type(exc).__name__
                    if isinstance(exc, TimeoutError):
                        error = f"time limit of {self.timeout:g} s exceeded"
                    error += at
                else:
                    self._heard_at = _now()
                    if resp.status_code == 200:
                        result, error = self._result(payload)
                        server.streak = 0  # it answers
                        if result is None:
                            server.stats.refused += 1
                        else:
                            server.stats.answered += 1
                        return result, error
                    error = f"HTTP {resp.status_code}: {self.redact(payload[:300].decode('utf-8', 'replace'))}{at}"
                    if resp.status_code != 429 and resp.status_code < 500:
                        server.streak = 0
                        server.stats.refused += 1
                        return None, error  # a client error does not get better by retrying
                    if resp.status_code >= 500 and payload and payload == last_server_error.get(server.index):
                        # the same server error twice for the same request: it is this request the server
                        # cannot take (e.g. a chat template that refuses its shape), not a passing fault
                        server.streak = 0
                        server.stats.refused += 1
                        return None, f"{error} (the same answer twice: not retried further)"
                    if resp.status_code >= 500:
                        last_server_error[server.index] = payload
                    else:
                        last_server_error.pop(server.index, None)
                    retry_after = retry_after_seconds(resp.headers.get("retry-after"))
                self._back_off(server, retry_after)  # before its connection is handed on
                tried.add(server.index)
                failed_on = server
                if attempt >= self.max_retries:
                    break
                self.stats.retries += 1
        finally:
            if held is not None:
                self._release(*held)
        silent = _now() - self._heard_at
        if self.give_up_after > 0 and silent >= self.give_up_after:
            raise ServersSilent(f"no server has answered for {silent:.0f} s; last error: {error}")
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

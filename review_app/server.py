"""HTTP side of the review app: security headers, the authenticated media route, health.

Mounted into Streamlit's own Starlette server by ``review_app/asgi.py`` through
``st.App(routes=..., middleware=...)``. Nothing here imports Streamlit, so the routes can
be tested with Starlette's test client alone.

* ``SecurityHeadersMiddleware`` adds a Content-Security-Policy that allows nothing but the
  app's own origin (plus the inline styles Streamlit's CSS-in-JS needs, and the hashes of
  the inline scripts in Streamlit's ``index.html``), so a markdown image smuggled into
  model output could not reach another host even if it were ever rendered.
* ``/media-files/<sha256>[/<variant>]`` serves imported media (and derived views) only to
  a signed-in user: the HttpOnly session cookie set by ``/auth/session`` is checked with
  ``workflow.auth.user_for_token`` on every request (cached for a few seconds), and the
  hash must exist in the ``media`` table. Range requests work (audio/video seeking);
  ``nosniff`` and a sandboxing CSP stop a hostile file from being run as a page.
* ``/healthz`` checks the database as well as the process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safereview.review_app import media_derive, runtime

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
REFUSAL_PAUSE_S = 1.0  # a refused upload is answered after this pause
USER_CACHE_S = 5.0
# mime types served inline; anything else goes out as an attachment of unknown type
INLINE_MIME = {
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/flac",
    "audio/x-flac",
    "audio/mpeg",
    "audio/ogg",
    "audio/mp4",
    "audio/aac",
    "audio/webm",
    "audio/opus",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "video/x-matroska",
}
MEDIA_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"
# 1x1 transparent GIF: the /auth/* routes are loaded as images
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


# ---------------------------------------------------------------------------------------
# Content-Security-Policy
# ---------------------------------------------------------------------------------------


def _inline_script_hashes() -> list[str]:
    """CSP hashes of the inline <script> blocks in Streamlit's index.html."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("streamlit")
        assert spec is not None and spec.origin is not None
        html = (Path(spec.origin).parent / "static" / "index.html").read_text(encoding="utf-8")
    except (OSError, AssertionError):
        return []
    hashes = []
    for body in re.findall(r"<script>(.*?)</script>", html, flags=re.S):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes.append(f"'sha256-{digest}'")
    return hashes


def content_security_policy() -> str:
    """Only the app's own origin; no external image, script, media, font or connection."""
    scripts = " ".join(["'self'", *_inline_script_hashes()])
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",  # emotion (Streamlit's CSS-in-JS) injects <style>
            "img-src 'self' data: blob:",
            "media-src 'self' blob: data:",
            "font-src 'self' data:",
            "connect-src 'self'",  # CSP level 3: 'self' covers ws(s) to the same host
            "worker-src 'self' blob:",
            "frame-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class SecurityHeadersMiddleware:
    """Pure ASGI middleware (websockets pass untouched) adding security headers."""

    def __init__(self, app: ASGIApp, csp: str | None = None) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", (csp or content_security_policy()).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            # Cross-site websocket hijacking: Streamlit accepts any localhost origin on any port, and
            # SameSite cookies do not separate ports. Refuse before the handshake completes (HTTP 403).
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _is_upload(scope):
            refusal = await _upload_refusal(scope)
            if refusal is not None:
                # No upload (memory) for a stranger: Streamlit's own route takes files from anyone
                # who holds a session id and the XSRF cookie, and keeps them in memory.
                status, text = refusal
                # Answered after a pause (no CPU: this connection's task just waits), so a client
                # cannot make the server refuse hundreds of uploads a second on one connection.
                await asyncio.sleep(REFUSAL_PAUSE_S)
                await Response(text, status_code=status, media_type="text/plain")(scope, receive, send)
                return

        new_browser = browser_cookie_header(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend((k, v) for k, v in self.headers if k not in present)
                if new_browser is not None:
                    headers.append((b"set-cookie", new_browser))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def browser_cookie_header(scope: Scope) -> bytes | None:
    """A ``Set-Cookie`` giving a browser its random id, when its request carries none.

    Sent with the first page load, so the websocket that follows carries it: the sign-in
    is bound to that id (the one-time cookie ticket, and the Streamlit session, which a
    connection from another browser cannot resume by knowing its session id).
    """
    from starlette.requests import HTTPConnection

    if HTTPConnection(scope).cookies.get(runtime.BROWSER_COOKIE):
        return None
    import secrets

    secure = "; Secure" if scope.get("scheme") == "https" else ""
    value = secrets.token_urlsafe(24)
    return (
        f"{runtime.BROWSER_COOKIE}={value}; Path={cookie_path()}; Max-Age=31536000; HttpOnly; SameSite=Strict{secure}"
    ).encode("latin-1")


def _is_upload(scope: Scope) -> bool:
    """Streamlit routes a stranger must not use: uploads, and the metrics (session counts, cache
    names, upload bytes)."""
    path = str(scope.get("path", ""))
    prefix = runtime.config().url_prefix
    return path.startswith((f"{prefix}/_stcore/upload_file", f"{prefix}/_stcore/metrics"))


async def _upload_refusal(scope: Scope) -> tuple[int, str] | None:
    """Why Streamlit's upload route (or its metrics) must not serve this request, or None.

    Only a signed-in user whose role may import uploads anything (the Import page is the
    only file uploader), every upload states its size, and the bytes Streamlit holds in
    memory stay within :func:`upload_caps` per session and in total.
    """
    from starlette.requests import HTTPConnection

    from safereview.workflow import policies

    token = HTTPConnection(scope).cookies.get(runtime.SESSION_COOKIE, "")
    user = await run_in_threadpool(user_for_token, token) if token else None
    if user is None:
        return 403, "sign in first"
    path = str(scope.get("path", ""))
    if "/_stcore/metrics" in path:
        return None
    if not policies.can(user, "import"):
        return 403, "your role may not upload files"
    if scope.get("method") != "PUT":
        return None  # DELETE (remove a file) frees memory; nothing else is routed there
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    try:
        size = int(headers.get("content-length", ""))
    except ValueError:
        return 411, "an upload must state its size"
    per_session, total = upload_caps()
    session_id = path.rsplit("/_stcore/upload_file/", 1)[-1].split("/", 1)[0]
    held_session, held_total = _uploads_held(session_id)
    if size + held_session > per_session or size + held_total > total:
        return 413, "too much uploaded at once: import what is uploaded, or wait for others to finish"
    return None


def upload_caps() -> tuple[int, int]:
    """Bytes Streamlit may hold in memory for uploads: per session (the items file and a media
    ZIP, each up to SAFEREVIEW_MAX_UPLOAD_MB) and over all sessions (two such imports)."""
    one = runtime.config().max_upload_mb << 20
    return 2 * one + (1 << 20), 4 * one + (1 << 20)


def _uploads_held(session_id: str) -> tuple[int, int]:
    """Bytes of uploads Streamlit's file manager holds for ``session_id`` and in total."""
    try:
        from streamlit.runtime import Runtime

        manager = Runtime.instance().uploaded_file_mgr
        storage = manager.file_storage  # type: ignore[attr-defined]
    except Exception:  # no runtime (the HTTP routes tested alone) or another file manager
        return 0, 0
    with manager._lock:  # type: ignore[attr-defined]
        per = {sid: sum(len(f.data) for f in files.values()) for sid, files in storage.items()}
    return per.get(session_id, 0), sum(per.values())


def origin_allowed(scope: Scope) -> bool:
    """A websocket may come from the app's own origin (scheme-less host:port equal to the Host
    header) or a configured one; a client that sends no Origin is no browser page, so no
    cross-site risk."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    origin = headers.get("origin", "").strip().rstrip("/").lower()
    if not origin:
        return True
    if origin in runtime.config().allowed_origins:
        return True
    from urllib.parse import urlsplit

    host = headers.get("host", "").strip().lower()
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc == host


def client_address(remote_ip: str | None, forwarded_for: str, trusted: tuple[str, ...]) -> str:
    """Where a connection comes from, for the sign-in limits per address.

    The socket's peer, unless that peer is a configured reverse proxy
    (``SAFEREVIEW_TRUSTED_PROXIES``): then the right-most ``X-Forwarded-For`` entry that is
    not itself a trusted proxy (entries to its left are whatever the client wrote). A
    loopback peer is ``local`` (Streamlit reports it as no address).
    """
    peer = remote_ip or "local"
    loopback = {"local", "127.0.0.1", "::1"}
    trusted_set = set(trusted) | (loopback if loopback & set(trusted) else set())
    if peer not in trusted_set or not forwarded_for:
        return peer[:64]
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if hop not in trusted_set:
            return hop[:64]
    return peer[:64]


# ---------------------------------------------------------------------------------------
# Who is asking
# ---------------------------------------------------------------------------------------

_user_cache: dict[str, tuple[float, Any]] = {}
_user_cache_lock = threading.Lock()


def user_for_token(token: str) -> Any | None:
    """The active user of a session token (cached briefly: media pages fire many requests)."""
    if not token or len(token) > 512:
        return None
    key = hashlib.sha256(token.encode()).hexdigest()
    now = time.monotonic()
    with _user_cache_lock:
        hit = _user_cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
    from sqlmodel import Session

    from safereview.workflow import auth

    with Session(runtime.engine(), expire_on_commit=False) as session:
        user = auth.user_for_token(session, token)
        if user is not None:
            session.expunge(user)
    with _user_cache_lock:
        if len(_user_cache) > 10_000:
            _user_cache.clear()
        _user_cache[key] = (now + USER_CACHE_S, user)
    return user


def forget_token(token: str) -> None:
    """Drop a token from the cache (sign-out) so revocation is immediate in this process."""
    with _user_cache_lock:
        _user_cache.pop(hashlib.sha256(token.encode()).hexdigest(), None)


def _request_user(request: Request) -> Any | None:
    return user_for_token(request.cookies.get(runtime.SESSION_COOKIE, ""))


# ---------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------


def _media_row(sha: str) -> Any | None:
    from sqlmodel import Session

    from safereview.db.models import Media

    with Session(runtime.engine(), expire_on_commit=False) as session:
        return session.get(Media, sha)


def _deny(status: int, text: str) -> Response:
    return PlainTextResponse(text, status_code=status, headers={"cache-control": "no-store"})


async def media_file(request: Request) -> Response:
    """Original media bytes, or a derived view, for a signed-in user."""
    sha = request.path_params["sha"]
    variant = request.path_params.get("variant")
    if not SHA_RE.match(sha):
        return _deny(404, "not found")
    user = await run_in_threadpool(_request_user, request)
    if user is None:
        return _deny(401, "sign in first")
    media = await run_in_threadpool(_media_row, sha)
    if media is None:
        return _deny(404, "not found")
    cfg = runtime.config()
    source = cfg.media_root / media.relpath
    if not source.is_file():
        return _deny(404, "media file missing on disk")
    headers = {
        "x-content-type-options": "nosniff",
        "cache-control": "private, max-age=86400",
        "content-security-policy": MEDIA_CSP,
        "cross-origin-resource-policy": "same-origin",
    }
    if variant is None:
        mime = media.mime if media.mime in INLINE_MIME else "application/octet-stream"
        disposition = "inline" if mime != "application/octet-stream" else "attachment"
        headers["content-disposition"] = f'{disposition}; filename="{sha[:16]}.{media.ext}"'
        return FileResponse(source, media_type=mime, headers=headers)
    if variant not in media_derive.VARIANTS or media_derive.VARIANTS[variant][0] != media.kind:
        return _deny(404, "no such view")
    try:
        path = await run_in_threadpool(
            media_derive.derive, source, sha, variant, cfg.cache_dir, max_image_pixels=cfg.max_image_pixels
        )
    except media_derive.DeriveError as exc:
        return _deny(422, str(exc))
    return FileResponse(path, media_type=media_derive.VARIANTS[variant][1], headers=headers)


def _gold_file(user: Any, snapshot_id: int, fmt: str) -> Any:
    from safereview.agreement.gold_files import snapshot_file
    from safereview.workflow import policies

    policies.require(user, "export")
    return snapshot_file(runtime.engine(), snapshot_id, fmt)


async def gold_download(request: Request) -> Response:
    """A gold snapshot file for a signed-in user allowed to export (Streamlit's own download
    button would serve it from its unauthenticated ``/media/<id>`` while the page is open)."""
    from safereview.agreement.data import AgreementError
    from safereview.agreement.gold_files import DOWNLOADS, file_name
    from safereview.workflow.errors import Forbidden

    user = await run_in_threadpool(_request_user, request)
    if user is None:
        return _deny(401, "sign in first")
    fmt = request.path_params["fmt"]
    if fmt not in DOWNLOADS:
        return _deny(404, "no such format")
    sid = int(request.path_params["snapshot_id"])
    try:
        gold = await run_in_threadpool(_gold_file, user, sid, fmt)
    except Forbidden:
        return _deny(403, "your role may not export gold labels")
    except AgreementError:
        return _deny(404, "no such snapshot")
    return _attachment(gold.data, file_name(sid, fmt), DOWNLOADS[fmt][1])


async def stashed_download(request: Request) -> Response:
    """A file a page prepared for its own signed-in user (e.g. an import's rejected rows)."""
    user = await run_in_threadpool(_request_user, request)
    if user is None:
        return _deny(401, "sign in first")
    entry = runtime.downloads.take(request.path_params["key"], int(user.id))
    if entry is None:
        return _deny(404, "gone: downloads are kept for 10 minutes, for the person they were made for")
    name, mime, data = entry
    return _attachment(data, name, mime)


def _attachment(data: bytes, name: str, mime: str) -> Response:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120] or "download"
    return Response(
        data,
        media_type=mime,
        headers={
            "content-disposition": f'attachment; filename="{safe}"',
            "cache-control": "no-store",
            "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'none'; sandbox",
        },
    )


def download_url(kind: str, *parts: Any) -> str:
    """Root-relative URL of an authenticated download (base path included)."""
    if kind == "gold":
        snapshot_id, fmt = parts
        return f"{runtime.config().url_prefix}/downloads/gold/{int(snapshot_id)}/{fmt}"
    (key,) = parts
    return f"{runtime.config().url_prefix}/downloads/file/{key}"


async def auth_session(request: Request) -> Response:
    """Swap a one-time sign-in ticket for the HttpOnly session cookie (see runtime.py)."""
    token = runtime.tickets.redeem(request.query_params.get("ticket", ""), request.cookies.get(runtime.BROWSER_COOKIE))
    if token is None or await run_in_threadpool(user_for_token, token) is None:
        return Response(PIXEL, media_type="image/gif", status_code=403, headers={"cache-control": "no-store"})
    response = Response(PIXEL, media_type="image/gif", headers={"cache-control": "no-store"})
    response.set_cookie(
        runtime.SESSION_COOKIE,
        token,
        max_age=int(runtime.config().session_hours * 3600),
        path=cookie_path(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def auth_signout(request: Request) -> Response:
    """Clear the session cookie (the page has already revoked the session in the database)."""
    token = request.cookies.get(runtime.SESSION_COOKIE, "")
    if token:
        forget_token(token)
    response = Response(PIXEL, media_type="image/gif", headers={"cache-control": "no-store"})
    response.delete_cookie(runtime.SESSION_COOKIE, path=cookie_path(), httponly=True, samesite="strict")
    return response


def has_audio() -> bool:
    """Whether the database holds any audio (the server then warms up the audio analysis)."""
    import sqlalchemy as sa

    with runtime.engine_for_url(runtime.config().db_url).connect() as conn:
        return conn.execute(sa.text("SELECT 1 FROM media WHERE kind = 'audio' LIMIT 1")).first() is not None


def _db_ok() -> bool:
    import sqlalchemy as sa

    with runtime.engine().connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    return True


async def keyboard_js(request: Request) -> Response:
    """The workbench's keyboard glue (review_app.keyboard): same origin, so the CSP lets it run."""
    from safereview.review_app.keyboard import SCRIPT

    return Response(SCRIPT, media_type="text/javascript", headers={"cache-control": "no-cache"})


async def healthz(request: Request) -> Response:
    try:
        await run_in_threadpool(_db_ok)
    except Exception as exc:
        return JSONResponse({"status": "error", "database": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


def routes() -> list[Route]:
    """Our routes, under the configured base path (Streamlit prefixes only its own)."""
    p = runtime.config().url_prefix
    return [
        Route(f"{p}/healthz", healthz, methods=["GET"]),
        Route(f"{p}/app-assets/keyboard.js", keyboard_js, methods=["GET"]),
        Route(f"{p}/media-files/{{sha}}", media_file, methods=["GET", "HEAD"]),
        Route(f"{p}/media-files/{{sha}}/{{variant}}", media_file, methods=["GET", "HEAD"]),
        Route(f"{p}/downloads/gold/{{snapshot_id:int}}/{{fmt}}", gold_download, methods=["GET"]),
        Route(f"{p}/downloads/file/{{key}}", stashed_download, methods=["GET"]),
        Route(f"{p}/auth/session", auth_session, methods=["GET"]),
        Route(f"{p}/auth/signout", auth_signout, methods=["GET"]),
    ]


def middleware() -> list[Middleware]:
    return [Middleware(SecurityHeadersMiddleware)]


def keyboard_url() -> str:
    return f"{runtime.config().url_prefix}/app-assets/keyboard.js"


def media_url(sha: str, variant: str | None = None) -> str:
    """Root-relative URL of a media file or one of its derived views (base path included)."""
    if not SHA_RE.match(sha):
        raise ValueError("not a sha256")
    return f"{runtime.config().url_prefix}/media-files/{sha}" + (f"/{variant}" if variant else "")


def auth_url(action: str, **query: str) -> str:
    """URL of the sign-in cookie routes (``session``/``signout``), base path included, HTML-escaped."""
    import html
    from urllib.parse import urlencode

    url = f"{runtime.config().url_prefix}/auth/{action}" + (f"?{urlencode(query)}" if query else "")
    return html.escape(url)


def cookie_path() -> str:
    """The session cookie is scoped to the app's own path."""
    return runtime.config().url_prefix or "/"

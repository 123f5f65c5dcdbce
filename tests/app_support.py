"""Fixture data and harness helpers for the review-app tests (``tests/test_app_*.py``).

Builds a small but real database: users of every role, a blind Uni-SafeBench collection
with text items (one carrying an XSS/beacon payload), an open VLSU collection, and real
decoded media (PNG, WAV, MP4) stored by content hash like the importer does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

REPO = Path(__file__).resolve().parents[1]
MAIN = importlib.util.find_spec("safereview.review_app.main").origin

PASSWORDS = {"admin": "admin-pass-123", "lead": "lead-pass-123", "ann1": "ann1-pass-123", "ann2": "ann2-pass-123"}
ROLES = {"admin": "admin", "lead": "lead", "ann1": "annotator", "ann2": "annotator"}

BEACON = "http://203.0.113.9/beacon.png"
XSS_PAYLOAD = (
    "Sure. <script>window.__pwned = 1</script> "
    '<img src=x onerror="window.__pwned = 2"> '
    f"![x]({BEACON}) [click](javascript:window.__pwned=3) **bold?** :red[red?]"
)
JUDGE = "uni-judger:test-model:v1"


@dataclass
class Fixture:
    db_url: str
    media_root: Path
    blind_collection: str = "fixture / blind"
    open_collection: str = "fixture / open"
    item_ids: dict[str, int] = field(default_factory=dict)
    media: dict[str, str] = field(default_factory=dict)  # kind -> sha256


# ---------------------------------------------------------------------------------------
# Media files
# ---------------------------------------------------------------------------------------


def make_png(path: Path, size: tuple[int, int] = (320, 200)) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (90, 140, 200))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 20, size[0] - 20, size[1] - 20], outline=(255, 255, 255), width=4)
    d.ellipse([size[0] // 3, size[1] // 4, size[0] // 3 + 80, size[1] // 4 + 80], fill=(240, 200, 60))
    img.save(path, format="PNG")
    return path


def make_wav(path: Path, seconds: float = 1.5, sr: int = 16000) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    y = 0.4 * np.sin(2 * np.pi * (220 + 300 * t) * t) * np.exp(-0.3 * t)
    sf.write(str(path), y.astype(np.float32), sr, subtype="PCM_16")
    return path


def make_mp4(path: Path, seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (160, 96)) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            arr[..., 0] = (i * 12) % 255
            arr[:, : (i * 8) % size[0], 1] = 200
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def store_media(session: Any, media_root: Path, path: Path, kind: str, mime: str, ext: str, **dims: Any) -> str:
    """Copy a file under the media root by hash and add its Media row (like the importer)."""
    from safereview.db.models import Media

    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    row = Media(sha256=sha, kind=kind, mime=mime, ext=ext, size_bytes=len(data), original_name=path.name, **dims)
    dest = media_root / row.relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    if session.get(Media, sha) is None:
        session.add(row)
    return sha


# ---------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------


def build_fixture(
    db_url: str, media_root: Path, *, n_plain: int = 4, work: Path | None = None, blind: bool = True
) -> Fixture:
    """Schema + users + two collections with verdicts; idempotent only for fresh databases."""
    from safereview.db.collections import ensure_collection
    from safereview.db.engine import init_db, session_scope
    from safereview.db.models import Item, Verdict
    from safereview.workflow import auth

    media_root = Path(media_root)
    media_root.mkdir(parents=True, exist_ok=True)
    work = work or media_root.parent / "fixture-src"
    work.mkdir(parents=True, exist_ok=True)
    fx = Fixture(db_url=db_url, media_root=media_root)
    engine = init_db(db_url)
    try:
        with session_scope(engine) as s:
            for name, pw in PASSWORDS.items():
                auth.create_user(s, name, pw, ROLES[name], display_name=name.upper(), actor=SYSTEM)
            col = ensure_collection(
                s, fx.blind_collection, "uni-safebench", overlap_target=2, blind=blind, audit_share=0.0
            )
            open_col = ensure_collection(s, fx.open_collection, "vlsu", overlap_target=1, blind=False, audit_share=0.0)
            png = store_media(
                s, media_root, make_png(work / "pic.png"), "image", "image/png", "png", width=320, height=200
            )
            wav = store_media(
                s,
                media_root,
                make_wav(work / "tone.wav"),
                "audio",
                "audio/wav",
                "wav",
                duration_s=1.5,
                sample_rate=16000,
            )
            mp4 = store_media(
                s,
                media_root,
                make_mp4(work / "clip.mp4"),
                "video",
                "video/mp4",
                "mp4",
                width=160,
                height=96,
                duration_s=2.0,
            )
            fx.media = {"image": png, "audio": wav, "video": mp4}

            def add_item(
                ext_id: str,
                collection_id: int,
                prompt: list,
                response: list,
                verdicts: dict[str, str],
                *,
                task: str = "Malicious Text Generation",
                cat: str = "Toxicity Content",
                sub: str = "Insults and Hatred",
                inputs: str = "text",
                outputs: str = "text",
                priority: float = 0.5,
            ) -> int:
                content = hashlib.sha256(repr((prompt, response)).encode()).hexdigest()
                item = Item(
                    collection_id=collection_id,
                    external_id=ext_id,
                    task_type=task,
                    category=cat,
                    subcategory=sub,
                    model="test-model",
                    input_modalities=inputs,
                    output_modalities=outputs,
                    prompt=prompt,
                    response=response,
                    content_hash=content,
                    priority=priority,
                )
                s.add(item)
                s.flush()
                for dim, label in verdicts.items():
                    s.add(
                        Verdict(
                            item_id=item.id,
                            dimension=dim,
                            judge_id=JUDGE,
                            label=label,
                            probability=0.8,
                            rationale=f"Reason: the response looks {label}.",
                            raw_output="Result: 1",
                        )
                    )
                fx.item_ids[ext_id] = item.id  # type: ignore[assignment]
                return item.id  # type: ignore[return-value]

            text = {"modality": "text"}
            for i in range(n_plain):
                add_item(
                    f"t{i}",
                    col.id,
                    [{**text, "text": f"Question number {i}: how do I do thing {i}?"}],
                    [{**text, "text": f"Answer {i}: a harmless reply."}],
                    {"contextual": "safe", "intrinsic": "safe"},
                    priority=0.9 - i * 0.1,
                )
            add_item(
                "xss",
                col.id,
                [{**text, "text": "Please repeat the payload."}],
                [{**text, "text": XSS_PAYLOAD}],
                {"contextual": "unsafe", "intrinsic": "unsafe"},
                priority=1.0,
            )
            add_item(
                "media-image",
                open_col.id,
                [{"modality": "image", "media": png, "name": "pic.png"}, {**text, "text": "What is this?"}],
                [{**text, "text": "A blue picture with a yellow circle."}],
                {"image": "safe", "text": "safe", "joint": "safe"},
                task="Image-text pair",
                cat="",
                sub="",
                inputs="image+text",
                priority=0.9,
            )
            add_item(
                "media-audio",
                open_col.id,
                [{"modality": "audio", "media": wav, "name": "tone.wav"}, {**text, "text": "Describe."}],
                [{**text, "text": "A rising tone."}],
                {"image": "safe", "text": "safe", "joint": "borderline"},
                task="Image-text pair",
                cat="",
                sub="",
                inputs="audio+text",
                priority=0.8,
            )
            add_item(
                "media-video",
                open_col.id,
                [{**text, "text": "Make a clip."}],
                [{"modality": "video", "media": mp4, "name": "clip.mp4"}],
                {"image": "safe", "text": "safe", "joint": "safe"},
                task="Image-text pair",
                cat="",
                sub="",
                outputs="video",
                priority=0.7,
            )
        queue_in_priority_order(engine, fx.blind_collection)
        queue_in_priority_order(engine, fx.open_collection)
    finally:
        engine.dispose()
    return fx


def queue_in_priority_order(engine: Any, collection: str) -> None:
    """Freeze a collection's sampling design with keys in priority order (highest first).

    The real design draws each item's key at random; a fixture that needs a known first item
    fixes the keys instead (every size 1, so each reviewed prefix is a simple random sample
    in the estimators' eyes).
    """
    import sqlalchemy as sa
    from sqlmodel import Session, select

    from safereview.db.models import Collection, Item, utcnow

    with Session(engine) as s:
        col = s.exec(select(Collection).where(Collection.name == collection)).one()
        col.design_frozen_at = col.design_frozen_at or utcnow()
        s.add(col)
        ids = s.exec(
            select(Item.id).where(Item.collection_id == col.id).order_by(Item.priority.desc(), Item.id)  # type: ignore[union-attr]
        ).all()
        for rank, item_id in enumerate(ids):
            s.execute(
                sa.update(Item)
                .where(Item.id == item_id)
                .values(sample_size=1.0, sample_key=(rank + 1) / (len(ids) + 1))
            )
        s.commit()


def app_env(fx: Fixture) -> dict[str, str]:
    return {
        "SAFEREVIEW_DB": fx.db_url,
        "SAFEREVIEW_MEDIA_ROOT": str(fx.media_root),
        "SAFEREVIEW_CACHE_DIR": str(fx.media_root.parent / "derived"),
    }


_REAL_MAIN = sys.modules["__main__"]


def reset_app_caches() -> None:
    """Streamlit caches and our engine cache persist across AppTest runs in one process."""
    import streamlit as st

    from safereview.review_app import runtime, server

    st.cache_data.clear()
    st.cache_resource.clear()
    runtime.engine_for_url.cache_clear()
    server._user_cache.clear()
    # AppTest's script runner installs the app script as __main__ and leaves it there; spawned
    # processes of later tests would then re-run the app as their main module and die.
    sys.modules["__main__"] = _REAL_MAIN


# ---------------------------------------------------------------------------------------
# A real server
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``safereview serve`` in a subprocess on a free local port."""

    def __init__(self, fx: Fixture, *, gc: str = "off", log: Path | None = None) -> None:
        self.fx = fx
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **app_env(fx)}
        cmd = [
            str(Path(sys.executable).parent / "safereview"),
            "serve",
            "--db",
            fx.db_url,
            "--media-root",
            str(fx.media_root),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--gc",
            gc,
        ]
        self.log_path = log or fx.media_root.parent / f"server-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO))

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early: {self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                prefix = os.environ.get("SAFEREVIEW_BASE_URL_PATH", "").strip("/")
                r = httpx.get(f"{self.base}{'/' + prefix if prefix else ''}/_stcore/health", timeout=2)
                if r.status_code == 200 and r.text.strip() == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not healthy: {self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Server:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def browser_fetched_ticket(ticket: str | None = None) -> int:
    """What a browser's <img src="/auth/session?ticket=…"> request does to a ticket, for AppTest.

    AppTest cannot give its session the browser-id cookie a real page load sets, so its
    tickets are bound to no browser and ``redeem()`` refuses them (as it must: see
    test_hardening_network's login-CSRF test). Mark the ticket (or, without one, every
    pending ticket) fetched directly instead; returns how many were marked.
    """
    import hashlib

    import sqlalchemy as sa

    from safereview.db.models import SignInTicket, utcnow
    from safereview.review_app import runtime

    t = SignInTicket.__table__  # type: ignore[attr-defined]
    stmt = sa.update(t).where(t.c.redeemed_at.is_(None)).values(redeemed_at=utcnow())
    if ticket is not None:
        stmt = stmt.where(t.c.ticket_sha256 == hashlib.sha256(ticket.encode()).hexdigest())
    try:
        with runtime.engine().begin() as conn:
            return conn.execute(stmt).rowcount
    except sa.exc.OperationalError:  # no schema yet (the app has not started)
        return 0


@contextlib.contextmanager
def app_pointed_at(fixture: Fixture, monkeypatch: Any) -> Iterator[Fixture]:
    """The in-process app (pages, routes) pointed at ``fixture``'s database, its caches fresh
    before and after."""
    for k, v in app_env(fixture).items():
        monkeypatch.setenv(k, v)
    reset_app_caches()
    try:
        yield fixture
    finally:
        reset_app_caches()


@contextlib.contextmanager
def routes_client() -> Iterator[Any]:
    """A test client for the app's own routes and middleware alone (no Streamlit)."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from safereview.review_app import server

    app = Starlette(routes=server.routes(), middleware=server.middleware())
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c

"""Shared pieces of the hardening tests (``tests/test_hardening_*.py``).

* a hostile-content corpus built on the fly: text payloads that would run script, load
  remote resources or confuse the reader if rendered as HTML/markdown, and media files that
  are bombs, truncated, mislabelled or not media at all;
* DB consistency checks used after crashes and concurrent bursts;
* counters the tests append to ``test-artifacts/hardening-counters.jsonl``, which
  ``bench/reliability_report.py`` sums into the reliability table (counts come from the
  tests that ran, never written by hand).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import types
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

import safereview.db.models

REPO = Path(__file__).resolve().parents[1]
COUNTERS = Path(os.environ.get("SAFEREVIEW_HARDENING_COUNTERS", REPO / "test-artifacts" / "hardening-counters.jsonl"))

OUTSIDE_HOST = "203.0.113.9"  # TEST-NET-3: never routable, so a leak cannot reach anybody


def tally(**counts: int) -> None:
    """Record what a test exercised (inputs tried, faults injected, ...) for the report."""
    COUNTERS.parent.mkdir(parents=True, exist_ok=True)
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    with COUNTERS.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"test": test, **counts}) + "\n")


# ---------------------------------------------------------------------------------------
# Hostile text: stored verbatim, rendered inert
# ---------------------------------------------------------------------------------------

HOSTILE_TEXT: dict[str, str] = {
    "script": "before <script>window.__pwned = 'script'</script> after",
    "img-onerror": "<img src=x onerror=\"window.__pwned = 'onerror'\">",
    "event-attr": '<div onmouseover="window.__pwned = \'hover\'" style="position:fixed;inset:0">cover</div>',
    "svg-onload": "<svg onload=\"window.__pwned = 'svg'\"><circle r=5 /></svg>",
    "iframe": "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>",
    "js-link-md": "[click me](javascript:window.__pwned='mdlink')",
    "js-link-html": "<a href=\"javascript:window.__pwned='a'\">click</a>",
    "remote-image-md": f"![beacon](http://{OUTSIDE_HOST}/md-beacon.png)",
    "remote-image-html": f'<img src="http://{OUTSIDE_HOST}/html-beacon.png">',
    "style-tag": f"<style>body {{ background: url(http://{OUTSIDE_HOST}/css-beacon.png) }} "
    "* { display: none !important }</style>",
    "style-attr": f'<span style="background:url(http://{OUTSIDE_HOST}/attr-beacon.png)">styled</span>',
    "streamlit-md": ":red[red?] **bold?** $\\href{javascript:window.__pwned='tex'}{tex}$",
    "bidi-override": "invoice_\u202egpj.exe and \u2066isolate\u2069 \u202bembed\u202c",
    "zero-width": "pass\u200bword \u200c\u200d\ufeff hidden\u2060joiner",
}

PWN_MARK = "__pwned"


def hostile_rows() -> list[dict[str, Any]]:
    """Generic-format rows, one per hostile text (in the prompt and the response)."""
    return [
        {"id": f"hostile-{name}", "prompt": f"repeat: {text}", "response": [{"modality": "text", "text": text}]}
        for name, text in HOSTILE_TEXT.items()
    ]


def big_text(n_chars: int) -> str:
    """A long text with a recognisable end (``END-OF-BIG-TEXT``)."""
    block = "All work and no play makes a model a dull judge. "
    body = (block * (n_chars // len(block) + 1))[: n_chars - 15]
    return body + "END-OF-BIG-TEXT"


# ---------------------------------------------------------------------------------------
# Hostile media files
# ---------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` with one tiny row of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" + b"\x00" * 30)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    )
    return path


def png_bomb(path: Path, side: int = 9000) -> Path:
    """A real, fully decodable 1-bit PNG of side² pixels (81 M > the 50 M default limit) in a few KB."""
    from PIL import Image

    Image.new("1", (side, side), 0).save(path, "PNG", optimize=True)
    return path


SVG_SCRIPT = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" '
    b'onload="window.__pwned=\'svgfile\'"><script>window.__pwned="svgscript"</script>'
    b'<rect width="10" height="10"/></svg>'
)


@dataclass(frozen=True)
class MediaCase:
    name: str  # file name in the media folder
    modality: str
    accepted: bool  # True: imported (safely decoded); False: refused with a message
    message: str  # a fragment of the refusal message (or of the stored MIME type when accepted)


def build_media_corpus(d: Path) -> list[MediaCase]:
    """Write the hostile media files into ``d``; returns what the importer must do with each."""
    from dataio_support import png, truncated, video, wav

    d.mkdir(parents=True, exist_ok=True)
    cases: list[MediaCase] = []
    good_png = png(d / "good.png")
    png_bomb(d / "bomb.png")
    cases.append(MediaCase("bomb.png", "image", False, "decompression-bomb"))
    png_header_only(d / "huge-dims.png", 60_000, 60_000)
    cases.append(MediaCase("huge-dims.png", "image", False, "decompression-bomb"))
    truncated(png(d / "src-big.png", size=(400, 300)), d / "truncated.png", keep=0.5)
    cases.append(MediaCase("truncated.png", "image", False, "truncated"))
    (d / "script.svg").write_bytes(SVG_SCRIPT)
    cases.append(MediaCase("script.svg", "image", False, "not a decodable image"))
    (d / "svg-as.png").write_bytes(SVG_SCRIPT)
    cases.append(MediaCase("svg-as.png", "image", False, "not a decodable image"))
    (d / "html-as.jpg").write_bytes(b"<html><script>window.__pwned='html'</script></html>")
    cases.append(MediaCase("html-as.jpg", "image", False, "not a decodable image"))
    (d / "png-named.jpg").write_bytes(good_png.read_bytes())  # wrong extension, real content wins
    cases.append(MediaCase("png-named.jpg", "image", True, "image/png"))
    wav(d / "src.wav", seconds=1.0)
    truncated(d / "src.wav", d / "truncated.wav", keep=0.5)
    cases.append(MediaCase("truncated.wav", "audio", False, "truncated"))
    (d / "empty.wav").write_bytes(b"")
    cases.append(MediaCase("empty.wav", "audio", False, "empty file"))
    (d / "text.wav").write_bytes(b"this is not audio at all\n" * 50)
    cases.append(MediaCase("text.wav", "audio", False, "not decodable audio"))
    (d / "png-as.wav").write_bytes(good_png.read_bytes())
    cases.append(MediaCase("png-as.wav", "audio", False, "not decodable audio"))
    clip = video(d / "src.mp4", frames=12)
    data = clip.read_bytes()
    (d / "corrupt.mp4").write_bytes(data[:64] + bytes(reversed(data[64:])))
    cases.append(MediaCase("corrupt.mp4", "video", False, "video"))
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    cases.append(MediaCase("truncated.mp4", "video", False, "video"))
    (d / "noise.mp4").write_bytes(os.urandom(4096))
    cases.append(MediaCase("noise.mp4", "video", False, "video"))
    return cases


def media_rows(cases: list[MediaCase]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"media-{c.name}",
            "prompt": [{"modality": c.modality, "path": c.name}, {"modality": "text", "text": "what is this?"}],
        }
        for c in cases
    ]


# ---------------------------------------------------------------------------------------
# Database consistency
# ---------------------------------------------------------------------------------------


def fk_problems(engine: sa.Engine) -> list[str]:
    """Rows whose foreign keys point nowhere (checked by query, so it works on both back ends)."""
    problems: list[str] = []
    with engine.connect() as conn:
        for table in safereview.db.models.SQLModel.metadata.sorted_tables:
            for fk in table.foreign_keys:
                col, ref = fk.parent, fk.column
                r = ref.table.alias("r")
                orphan = (
                    sa.select(sa.func.count())
                    .select_from(table)
                    .where(col.is_not(None), ~sa.exists().where(r.c[ref.name] == col))
                )
                n = conn.execute(orphan).scalar_one()
                if n:
                    problems.append(f"{table.name}.{col.name}: {n} row(s) point to no {ref.table.name}.{ref.name}")
    return problems


def slot_problems(engine: sa.Engine) -> list[str]:
    """slots_taken must equal leased+done assignments (every collection) and never exceed k."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT item.id, item.slots_taken, collection.overlap_target, "
                "(SELECT COUNT(*) FROM assignment a WHERE a.item_id = item.id AND a.status IN ('leased', 'done')) "
                "FROM item JOIN collection ON collection.id = item.collection_id"
            )
        ).all()
    out = []
    for item_id, taken, k, held in rows:
        if taken != held:
            out.append(f"item {item_id}: slots_taken {taken} != {held} leased/done assignments")
        if held > k:
            out.append(f"item {item_id}: {held} slots > overlap target {k}")
    return out


def replay_problems(engine: sa.Engine) -> list[str]:
    """Annotations whose event log does not replay to the stored row."""
    from safereview.workflow.annotations import replay_events, stored_state

    with Session(engine) as s:
        replayed, stored = replay_events(s), stored_state(s)
    out = [
        f"annotation {i}: replay {replayed.get(i)} != stored {stored.get(i)}"
        for i in sorted(set(replayed) | set(stored))
        if replayed.get(i) != stored.get(i)
    ]
    return out


def consistency_problems(engine: sa.Engine) -> list[str]:
    return fk_problems(engine) + slot_problems(engine) + replay_problems(engine)


# ---------------------------------------------------------------------------------------
# Annotators in separate processes
# ---------------------------------------------------------------------------------------

VLSU_LABELS = ("safe", "borderline", "unsafe")


@contextmanager
def plain_main() -> Iterator[None]:
    """Start child processes with an empty ``__main__``.

    Streamlit's AppTest (run by earlier tests in the same pytest process) leaves
    ``sys.modules["__main__"]`` pointing at the app script; spawn/forkserver children would
    re-run it as their main module and die before reaching the worker.
    """
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def burst_worker(
    db_url: str,
    user_id: int,
    collection_id: int,
    seed: int,
    seconds: float | None,
    ready: Any,
    go: Any,
    results: Any,
    report_each: bool = False,
) -> None:
    """A spawned annotator: pull and submit random labels until ``seconds`` pass or the queue is empty.

    Puts ``(user_id, [(item_id, labels), ...], n_retried_errors)`` on ``results`` at the end;
    with ``report_each`` also ``(user_id, (item_id, labels))`` right after each commit (so a
    parent that SIGKILLs the process knows what was committed before).
    """
    import random
    import time

    from workflow_support import detached_user

    from safereview.db.engine import make_engine, session_scope
    from safereview.workflow.annotations import submit
    from safereview.workflow.queue import QueueFilter, next_item

    engine = make_engine(db_url)
    rng = random.Random(seed)
    user = detached_user(engine, user_id)
    ready.put(user_id)
    go.wait(180)
    deadline = time.monotonic() + seconds if seconds is not None else float("inf")
    done: list[tuple[int, dict[str, str]]] = []
    errors = 0
    try:
        while time.monotonic() < deadline:
            try:
                a = next_item(engine, user, QueueFilter(collection_id), rng=rng)
            except sa.exc.OperationalError:
                errors += 1
                time.sleep(0.01 * rng.random())
                continue
            if a is None:
                break
            labels = {d: rng.choice(VLSU_LABELS) for d in ("image", "text", "joint")}
            try:
                with session_scope(engine) as s:
                    submit(s, user, a.id, labels)  # type: ignore[arg-type]
            except sa.exc.OperationalError:
                errors += 1  # not committed; the lease stays ours and comes back from next_item
                time.sleep(0.01 * rng.random())
                continue
            done.append((a.item_id, labels))
            if report_each:
                results.put((user_id, (a.item_id, labels)))
        results.put((user_id, done, errors))
    except BaseException as exc:  # report instead of hanging the parent
        results.put((user_id, repr(exc), errors))
    finally:
        engine.dispose()


def stored_labels(engine: sa.Engine, collection_id: int) -> list[tuple[int, int, dict[str, str]]]:
    """(user_id, item_id, labels) of every annotation in the collection."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT a.user_id, a.item_id, a.labels FROM annotation a JOIN item i ON i.id = a.item_id "
                "WHERE i.collection_id = :c"
            ),
            {"c": collection_id},
        ).all()
    out = []
    for uid, iid, labels in rows:
        if isinstance(labels, str):
            labels = json.loads(labels)
        out.append((int(uid), int(iid), labels))
    return out

"""Hostile content at import: each input is either refused with ``FILE:LINE: field: message``
or accepted and stored verbatim (what is accepted is checked in the browser by
``test_hardening_browser.py``).

Per input (also in docs/reliability.md):

* hostile **text** (script, event handlers, ``javascript:`` links, remote images, CSS,
  bidi overrides, zero-width characters): **accepted**, stored byte for byte;
* text longer than ``SAFEREVIEW_MAX_TEXT_CHARS`` (10 MB here): **refused** (the cap);
* invalid UTF-8 in JSONL or CSV: **refused**, naming the line;
* decompression bombs, huge declared dimensions, truncated images, SVG (with script), HTML
  named ``.jpg``: **refused**; a PNG named ``.jpg``: **accepted** as ``image/png``;
* truncated, zero-length and non-audio files: **refused**; corrupt, truncated and noise
  video: **refused**.
"""

from __future__ import annotations

import re
from pathlib import Path

import hardening_support as H
import pytest
import sqlalchemy as sa
from dataio_support import count, snapshot, write_jsonl
from sqlmodel import Session, select

from safereview.dataio.importers import import_file
from safereview.db.models import Item, Media
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

LINE_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<field>[^:]+): (?P<msg>.+)$", re.S)


def _imp(engine: sa.Engine, path: Path, root: Path, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("collection", "hostile")
    kw.setdefault("taxonomy", "vlsu")
    return import_file(engine, path, media_root=root, actor=SYSTEM, **kw)  # type: ignore[arg-type]


def _by_line(errors: list[str]) -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = {}
    for e in errors:
        m = LINE_RE.match(e)
        assert m, f"not FILE:LINE: field: message: {e!r}"
        out.setdefault(int(m["line"]), []).append((m["field"], m["msg"]))
    return out


def test_hostile_text_is_accepted_verbatim(engine: sa.Engine, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "hostile.jsonl", H.hostile_rows())
    rep = _imp(engine, f, tmp_path / "root")
    assert rep.ok, rep.errors
    with Session(engine) as s:
        items = {i.external_id: i for i in s.exec(select(Item))}
    assert len(items) == len(H.HOSTILE_TEXT)
    for name, text in H.HOSTILE_TEXT.items():
        it = items[f"hostile-{name}"]
        assert it.response == [{"modality": "text", "text": text}]  # nothing stripped, nothing escaped
        assert it.prompt == [{"modality": "text", "text": f"repeat: {text}"}]
    H.tally(inputs_tried=len(H.HOSTILE_TEXT), inputs_accepted=len(H.HOSTILE_TEXT))


def test_text_over_the_cap_is_refused_with_its_line(engine: sa.Engine, tmp_path: Path) -> None:
    ten_mb = H.big_text(10 * 1024 * 1024)
    rows = [{"id": "ok", "prompt": "short"}, {"id": "huge", "prompt": "q", "response": ten_mb}]
    f = write_jsonl(tmp_path / "big.jsonl", rows)
    before = snapshot(engine)
    rep = _imp(engine, f, tmp_path / "root")
    assert not rep.ok
    lines = _by_line(rep.errors)
    assert list(lines) == [2]
    ((field, msg),) = lines[2]
    assert field.startswith("response") and f"{len(ten_mb)} characters exceeds the limit of 200000" in msg
    assert snapshot(engine) == before  # all or nothing
    # with the cap raised, the same file imports and keeps every character
    from safereview import settings

    rep = _imp(engine, f, tmp_path / "root", config=settings.load(db_url=str(engine.url), max_text_chars=11 << 20))
    assert rep.ok, rep.errors
    with Session(engine) as s:
        (resp,) = s.exec(select(Item.response).where(Item.external_id == "huge")).all()
    assert resp[0]["text"] == ten_mb
    H.tally(inputs_tried=1, inputs_refused=1, limits_checked=1)


def test_invalid_utf8_in_jsonl_names_the_line(engine: sa.Engine, tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_bytes(
        b'{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "caf\xe9 \xff\xfe"}\n{"id": "c", "prompt": "fine too"}\n'
    )
    before = snapshot(engine)
    rep = _imp(engine, f, tmp_path / "root")
    assert not rep.ok
    lines = _by_line(rep.errors)
    assert list(lines) == [2] and "UTF-8" in lines[2][0][1]
    assert snapshot(engine) == before
    H.tally(inputs_tried=1, inputs_refused=1)


def test_invalid_utf8_in_csv_names_the_line(engine: sa.Engine, tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_bytes(b"id,prompt_text\na,fine\nb,fine\nc,caf\xe9 \xff\nd,fine\n")
    before = snapshot(engine)
    rep = _imp(engine, f, tmp_path / "root")
    assert not rep.ok
    lines = _by_line(rep.errors)
    assert list(lines) == [4], rep.errors
    assert "UTF-8" in lines[4][0][1] or "utf-8" in lines[4][0][1]
    assert snapshot(engine) == before
    H.tally(inputs_tried=1, inputs_refused=1)


def test_hostile_media_refused_or_safely_decoded(engine: sa.Engine, tmp_path: Path) -> None:
    media = tmp_path / "in"
    cases = H.build_media_corpus(media)
    f = write_jsonl(media / "media.jsonl", H.media_rows(cases))
    before = snapshot(engine)
    rep = _imp(engine, f, tmp_path / "root")
    assert not rep.ok
    lines = _by_line(rep.errors)
    for line, case in enumerate(cases, start=1):
        if case.accepted:
            assert line not in lines, (case, lines.get(line))
            continue
        assert line in lines, f"{case.name} was not refused"
        ((field, msg),) = lines[line]
        assert field == "prompt[0].path", (case.name, field)
        assert case.message in msg, (case.name, msg)
        assert "Traceback" not in msg and len(msg) < 400
    assert snapshot(engine) == before
    assert not (tmp_path / "root").exists() or not any(p.is_file() for p in (tmp_path / "root").rglob("*"))

    # --skip-invalid: the accepted ones go in, safely decoded, the rest land in the rejects file
    rep = _imp(engine, f, tmp_path / "root", skip_invalid=True)
    assert rep.ok and rep.rejected == sum(not c.accepted for c in cases)
    with Session(engine) as s:
        stored = s.exec(select(Media)).all()
    assert [(m.kind, m.mime, m.ext) for m in stored] == [("image", "image/png", "png")]
    assert (stored[0].width, stored[0].height) == (24, 16)
    assert count(engine, "item") == sum(c.accepted for c in cases)
    H.tally(
        inputs_tried=len(cases),
        inputs_refused=sum(not c.accepted for c in cases),
        inputs_accepted=sum(c.accepted for c in cases),
    )


@pytest.mark.parametrize("case", ["bomb.png", "huge-dims.png"])
def test_bomb_limit_follows_the_setting(tmp_path: Path, case: str) -> None:
    """The bomb refusal is the configured limit, not an accident of the decoder."""
    from safereview.dataio import media as dm

    d = tmp_path / "in"
    H.build_media_corpus(d)
    with pytest.raises(dm.MediaError, match="decompression-bomb limit 50000000"):
        dm.probe(d / case, "image")
    with pytest.raises(dm.MediaError, match="decompression-bomb limit 100 "):
        dm.probe(d / "good.png", "image", max_image_pixels=100)
    H.tally(inputs_tried=2, inputs_refused=2)


def test_invalid_utf8_in_csv_header_is_refused_cleanly(engine: sa.Engine, tmp_path: Path) -> None:
    f = tmp_path / "badhead.csv"
    f.write_bytes(b"id,prompt_t\xe9xt\na,fine\n")
    before = snapshot(engine)
    rep = _imp(engine, f, tmp_path / "root")
    assert not rep.ok and len(rep.errors) == 1
    assert "(header): not valid UTF-8" in rep.errors[0]
    rep.errors[0].encode("utf-8")  # printable: no lone surrogates leak into the message
    assert snapshot(engine) == before
    H.tally(inputs_tried=1, inputs_refused=1)

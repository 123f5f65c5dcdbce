"""Media references that try to leave the media folder or fetch something are refused at import.

Every refusal is ``FILE:LINE: field: message`` and the database is unchanged. (The app's
media route is covered in ``test_hardening_browser.py``: ``..``, encoded ``..``, non-hex
and wrong-length hashes, expired/revoked sessions.)
"""

from __future__ import annotations

import os
from pathlib import Path

import hardening_support as H
import sqlalchemy as sa
from dataio_support import png, snapshot, write_jsonl
from test_hardening_content import _by_line, _imp


def test_path_tricks_and_foreign_schemes_are_refused(engine: sa.Engine, tmp_path: Path) -> None:
    media = tmp_path / "in"
    png(media / "ok.png")
    outside = png(tmp_path / "secret" / "outside.png")
    os.symlink(outside, media / "link-out.png")
    os.symlink(tmp_path / "secret", media / "dir-link")
    (media / "sub").mkdir()
    png(media / "sub" / "fine.png")
    refs = {
        "../secret/outside.png": "'..'",
        "sub/../../secret/outside.png": "'..'",
        str(outside): "absolute path",
        "/etc/passwd": "",
        "link-out.png": "symlink",
        "dir-link/outside.png": "symlink",
        "http://203.0.113.9/x.png": "URLs are not accepted",
        "https://203.0.113.9/x.png": "URLs are not accepted",
        "file:///etc/passwd": "URLs are not accepted",
        "ftp://203.0.113.9/x.png": "URLs are not accepted",
        "data:image/png;base64,iVBORw0KGgo=": "URLs are not accepted",
        "javascript:alert(1)": "URLs are not accepted",
        "s3://bucket/x.png": "URLs are not accepted",
        "ok.png\x00.txt": "NUL",
        "~/x.png": "not found",
        "": "",
    }
    rows = [{"id": f"p{i}", "prompt": [{"modality": "image", "path": ref}]} for i, ref in enumerate(refs)]
    rows.append({"id": "good", "prompt": [{"modality": "image", "path": "sub/fine.png"}]})
    f = write_jsonl(media / "paths.jsonl", rows)
    before = snapshot(engine)
    rep = _imp(engine, f, tmp_path / "root")
    assert not rep.ok
    lines = _by_line(rep.errors)
    for line, (ref, fragment) in enumerate(refs.items(), start=1):
        assert line in lines, f"{ref!r} was not refused"
        ((field, msg),) = lines[line]
        assert field == "prompt[0].path" and fragment in msg, (ref, field, msg)
    assert len(refs) + 1 not in lines  # the good reference inside the folder is fine
    assert snapshot(engine) == before
    H.tally(inputs_tried=len(refs) + 1, inputs_refused=len(refs), inputs_accepted=1)

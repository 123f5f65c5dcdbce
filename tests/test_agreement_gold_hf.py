"""The Hugging Face gold folder loads with the real ``datasets`` package: typed features (class
labels in taxonomy order) and, decoded, exactly the rows of the Parquet export."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from agreement_support import taxonomy, write_ratings, write_verdicts
from typer.testing import CliRunner

from safereview.agreement.gold import HF_DATA_FILE, LABEL_COLUMNS, dimension_labels
from safereview.agreement.gold_files import snapshot_file
from safereview.cli.main import app

SCORE = ["safe", "borderline", "unsafe"]
COMPLIANCE = ["refused", "safe"]  # "safe" again: one class name for both dimensions
NAMES = ["safe", "borderline", "unsafe", "refused"]  # every dimension's labels in taxonomy order, once


def _scene(engine: sa.Engine) -> None:
    """Two collections with different taxonomies, one judge, ties in both."""
    score = {
        "a": ["safe", "safe", "unsafe", "borderline", "unsafe"],
        "b": ["safe", "unsafe", "unsafe", "safe", None],
        "c": ["safe", None, "borderline", "unsafe", None],
    }
    ids = write_ratings(engine, "g", taxonomy(SCORE, ordered=True), "score", score)
    write_verdicts(engine, ids, "score", ["safe", "unsafe", None, "safe", "unsafe"], "judge-x")
    comp_tax = taxonomy(COMPLIANCE, ordered=False, dimension="compliance", name="comp")
    comp = {"a": ["refused", "safe", "safe"], "b": ["refused", "refused", None]}
    ids = write_ratings(engine, "h", comp_tax, "compliance", comp)
    write_verdicts(engine, ids, "compliance", ["refused", "safe", None], "judge-x")


def _export(db_url: str, out: Path, *extra: str) -> None:
    args = ["export", "gold", "-c", "g", "-c", "h", "--judge", "judge-x", "-o", str(out), *extra, "--db", db_url]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output


def _load(folder: Path) -> Any:
    from datasets import load_dataset

    return load_dataset(str(folder), split="gold")


def _decoded(ds: Any) -> list[dict[str, Any]]:
    """The loaded rows with the class-label codes turned back into their names."""
    rows = ds.to_list()
    for row in rows:
        for col in LABEL_COLUMNS:
            row[col] = None if row[col] is None else ds.features[col].int2str(row[col])
    return rows


def test_the_hf_folder_loads_typed_with_the_parquet_rows(
    engine: sa.Engine, db_url: str, tmp_path: Path, hf_offline: Path
) -> None:
    datasets = pytest.importorskip("datasets")
    _scene(engine)
    _export(db_url, tmp_path / "gold-hf", "--format", "hf")
    _export(db_url, tmp_path / "gold.parquet")  # the same gold: the same snapshot, as plain Parquet
    plain = pq.read_table(tmp_path / "gold.parquet")
    assert plain.schema.field("label").type == pa.string()  # only the hf folder holds codes

    ds = _load(tmp_path / "gold-hf")
    for col in LABEL_COLUMNS:
        assert ds.features[col] == datasets.ClassLabel(names=NAMES)
    assert ds.features["dimension"] == datasets.Value("string")
    assert ds.features["item_id"] == datasets.Value("int64")
    assert ds.features["n_annotators"] == datasets.Value("int32")
    assert ds.features["agreement"] == datasets.Value("float64")
    assert list(ds.features) == plain.column_names
    rows = plain.to_pylist()
    assert _decoded(ds) == rows
    ties = [i for i, r in enumerate(rows) if r["method"] == "tie"]
    assert {rows[i]["dimension"] for i in ties} == {"score", "compliance"}
    assert all(ds[i]["label"] is None for i in ties)
    assert {r["collection"] for r in ds} == {"g", "h"}  # one split, the collection a column

    # the card's YAML and the Parquet file's own metadata declare the same features
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(tmp_path / "gold-hf" / "README.md")
    infos = datasets.info.DatasetInfosDict.from_dataset_card_data(card.data)
    schema = pq.read_schema(tmp_path / "gold-hf" / HF_DATA_FILE)
    assert infos["default"].features == datasets.Features.from_arrow_schema(schema) == ds.features
    assert json.loads(schema.metadata[b"safereview"]) == {"labels": {"score": SCORE, "compliance": COMPLIANCE}}
    assert "| compliance | refused, safe |" in card.text


def test_the_gold_page_download_and_an_older_snapshot_load_the_same(
    engine: sa.Engine, db_url: str, tmp_path: Path, hf_offline: Path
) -> None:
    """The zipped folder is built from the stored rows; a snapshot made before the labels were
    recorded takes them from the collections' taxonomy."""
    pytest.importorskip("datasets")
    _scene(engine)
    _export(db_url, tmp_path / "gold.parquet")
    with zipfile.ZipFile(io.BytesIO(snapshot_file(engine, 1, "hf").data)) as zf:
        zf.extractall(tmp_path / "zip")
    ds = _load(tmp_path / "zip" / "gold-1")
    assert ds.features["label"].names == NAMES
    assert _decoded(ds) == pq.read_table(tmp_path / "gold.parquet").to_pylist()

    old = SimpleNamespace(params={"collections": ["g", "h"], "dimensions": ["score", "compliance"]})
    assert dimension_labels(engine, old) == {"score": SCORE, "compliance": COMPLIANCE}
    gone = SimpleNamespace(params={"collections": ["renamed"], "dimensions": ["score"]})
    assert dimension_labels(engine, gone) == {}

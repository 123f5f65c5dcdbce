"""Gold snapshots (reproducible checksums, methods, judge beside) and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml
from agreement_support import make_user, taxonomy, write_ratings, write_verdicts
from sqlmodel import Session, select
from typer.testing import CliRunner

from safereview.agreement.consensus import adjudicate
from safereview.agreement.gold import COLUMNS, create_snapshot, snapshot_table, write
from safereview.cli.main import app
from safereview.db.collections import ensure_collection
from safereview.db.engine import init_db
from safereview.db.models import Gold, GoldSnapshot, Item
from safereview.workflow.errors import Forbidden
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

TAX = taxonomy(["safe", "borderline", "unsafe"], ordered=True)
COLS = {
    "a": ["safe", "safe", "unsafe", "borderline", "unsafe"],
    "b": ["safe", "unsafe", "unsafe", "safe", None],
    "c": ["safe", None, "borderline", "unsafe", None],
}


def _scene(engine: sa.Engine) -> list[int]:
    ids = write_ratings(engine, "g", TAX, "score", COLS)
    write_verdicts(engine, ids, "score", ["safe", "unsafe", None, "safe", "unsafe"], "judge-x")
    return ids


def test_snapshot_rows_methods_and_reproducible_checksum(engine: sa.Engine) -> None:
    ids = _scene(engine)
    lead = make_user(engine, "lead", "lead")
    annotator = make_user(engine, "ann", "annotator")
    with Session(engine) as s:
        with pytest.raises(Forbidden):
            create_snapshot(s, annotator, ["g"])
        snap1, table1 = create_snapshot(s, lead, ["g"])
        s.commit()
        snap2, table2 = create_snapshot(s, lead, ["g"])
        s.commit()
        # the same gold again (another format, another click) is the same snapshot, not a new identical one
        assert snap2.id == snap1.id and snap1.checksum == snap2.checksum and snap1.n_rows == 5
        assert s.exec(select(GoldSnapshot)).all() == [snap1]
        pop = snap1.params["population"]  # what the labels imply for the collection, recorded with them
        assert pop["sample"]["n_in_sample"] == 5 and {m["metric"] for m in pop["metrics"]} >= {"score: unsafe"}
        assert table2.drop(["snapshot_id"]).equals(table1.drop(["snapshot_id"]))
        rows = table1.to_pylist()
        assert table1.column_names == list(COLUMNS)
        assert [r["method"] for r in rows] == ["unanimous", "tie", "majority", "tie", "single"]
        assert [r["label"] for r in rows] == ["safe", None, "unsafe", None, "unsafe"]
        assert [r["n_annotators"] for r in rows] == [3, 2, 3, 3, 1]
        assert rows[2]["agreement"] == pytest.approx(2 / 3)
        assert [r["judge_label"] for r in rows] == ["safe", "unsafe", None, "safe", "unsafe"]
        assert {r["judge_id"] for r in rows} == {"judge-x"} and {r["snapshot_id"] for r in rows} == {snap1.id}
        stored = s.exec(select(Gold).where(Gold.snapshot_id == snap1.id).order_by(Gold.item_id)).all()
        assert [g.label for g in stored] == [r["label"] for r in rows]
        # an adjudication changes the gold, hence the checksum
        adjudicate(s, lead, ids[1], "score", "borderline", "looked again")
        s.commit()
        snap3, table3 = create_snapshot(s, lead, ["g"])
        s.commit()
        assert snap3.checksum != snap1.checksum and snap3.id == snap1.id + 1
        row = table3.to_pylist()[1]
        assert row["method"] == "adjudicated" and row["label"] == "borderline"
        ds_snap, ds_table = create_snapshot(s, lead, ["g"], method="dawid-skene")
        s.commit()
        assert ds_snap.method == "dawid-skene"
        assert all(r["posterior"] is not None for r in ds_table.to_pylist())
        # a stored snapshot reads back identically
        again = snapshot_table(s, snap3.id)
        assert again.to_pylist() == table3.to_pylist()


def test_writers_and_hugging_face_layout(tmp_path: Path, sqlite_url: str) -> None:
    engine = init_db(sqlite_url)
    _scene(engine)
    with Session(engine) as s:
        snap, table = create_snapshot(s, SYSTEM, ["g"])
        s.commit()
        for fmt, name in (("jsonl", "g.jsonl"), ("csv", "g.csv"), ("parquet", "g.parquet")):
            write(table, tmp_path / name, fmt, snap)
        paths = write(table, tmp_path / "hf", "hf", snap)
    lines = (tmp_path / "g.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[1])["label"] is None
    assert (tmp_path / "g.csv").read_text().splitlines()[0].replace('"', "").split(",") == list(COLUMNS)
    assert pq.read_table(tmp_path / "g.parquet").to_pylist() == table.to_pylist()
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\n")
    assert "not a random sample of the collection" in card  # the obvious accuracy from these rows is biased
    front = yaml.safe_load(card.split("---\n")[1])
    cfg = front["configs"][0]
    assert cfg["config_name"] == "default"
    data_file = tmp_path / "hf" / cfg["data_files"][0]["path"]
    assert data_file in paths and pq.read_table(data_file).num_rows == 5
    assert snap.checksum in card
    assert "## Rates over the collection" in card and "| score: unsafe |" in card


def test_cli_agreement_audit_calibrate_export(tmp_path: Path, sqlite_url: str) -> None:
    engine = init_db(sqlite_url)
    ids = _scene(engine)
    engine.dispose()
    runner = CliRunner()
    res = runner.invoke(app, ["agreement", "--db", sqlite_url, "-c", "g", "--resamples", "50", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    d = rep["dimensions"][0]
    assert d["dimension"] == "score" and d["overall"]["n_units"] == 5 and rep["resamples"] == 50
    assert d["judge"]["judge_id"] == "judge-x"
    for row in d["pairwise"] + d["raters"]:  # per-person figures carry their intervals
        if row["kappa_ci_low"] is not None:
            assert row["kappa_ci_low"] <= row["kappa"] <= row["kappa_ci_high"]
        else:  # undefined, or every resample of the five items gave one value (said so)
            assert row["kappa"] is None or "kappa" in row["no_interval"]
        assert row["agreement_ci_low"] <= row["agreement"] <= row["agreement_ci_high"]
        assert row["warnings"]  # five items: one item can swing these figures
    res = runner.invoke(app, ["agreement", "--db", sqlite_url, "--by", "task_type", "--resamples", "20"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "pairwise Cohen's kappa (95% intervals over the items both labelled)" in flat
    assert "each annotator vs the majority of the others" in flat
    assert "these figures: agreement among the people on the items they labelled" in " ".join(res.output.split())
    res = runner.invoke(app, ["agreement", "--db", sqlite_url, "-c", "nope"])
    assert res.exit_code == 1 and "no collection named 'nope'" in res.output
    res = runner.invoke(app, ["audit", "--db", sqlite_url, "-c", "g", "--json", "--resamples", "10"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["dimensions"][0]["n_sample_items"] == 5  # every item reviewed: a census
    assert "too few sample items (n=4 < 20)" in out["dimensions"][0]["accuracy"]["undefined_reason"]
    rates = {m["metric"]: m for m in out["population"]["metrics"]}
    unsafe = rates["score: unsafe"]["human"]
    assert unsafe["low"] == unsafe["value"] == unsafe["high"]  # a census: the people's rate is exact
    # a collection nobody has reviewed yet: undefined figures are JSON nulls, never NaN
    engine = init_db(sqlite_url)
    with Session(engine) as s:
        empty = ensure_collection(s, "nobody-yet", TAX)
        new_items = [Item(collection_id=empty.id, external_id=f"e{i}", content_hash="x") for i in range(3)]
        s.add_all(new_items)
        s.commit()
        empty_ids = [int(i.id) for i in new_items]  # type: ignore[arg-type]
    write_verdicts(engine, empty_ids, "score", ["safe", "unsafe", "safe"], "judge-x")
    engine.dispose()
    res = runner.invoke(app, ["audit", "--db", sqlite_url, "-c", "nobody-yet", "--json", "--resamples", "10"])
    assert res.exit_code == 0, res.output
    rates = {m["metric"]: m for m in json.loads(res.output)["population"]["metrics"]}
    assert rates["score: unsafe"]["human"]["value"] is None and rates["score: unsafe"]["judge"]["value"] == 1 / 3
    res = runner.invoke(app, ["calibrate", "--db", sqlite_url, "-d", "score", "-c", "g"])
    assert res.exit_code == 1 and "probability" in res.output  # the scene's judge gave no probabilities
    out_file = tmp_path / "gold.parquet"
    res = runner.invoke(app, ["export", "gold", "--db", sqlite_url, "-c", "g", "-o", str(out_file)])
    assert res.exit_code == 0, res.output
    assert "gold snapshot 1: 5 rows" in res.output and pq.read_table(out_file).num_rows == 5
    assert "note: The rows are the items people reviewed." in res.output
    res = runner.invoke(app, ["export", "gold", "--db", sqlite_url, "--snapshot", "1", "-o", str(tmp_path / "hfdir")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "hfdir" / "README.md").exists()
    with Session(init_db(sqlite_url)) as s:
        assert len(s.exec(select(GoldSnapshot)).all()) == 1
    assert ids


def test_snapshot_files_are_built_on_demand_from_the_stored_rows(engine: sa.Engine) -> None:
    """What the Gold page's deferred download buttons return, for every format."""
    import csv
    import io
    import zipfile

    from safereview.agreement.data import AgreementError
    from safereview.agreement.gold_files import DOWNLOADS, snapshot_file

    _scene(engine)
    with Session(engine) as s:
        snap, table = create_snapshot(s, SYSTEM, ["g"])
        s.commit()
        sid, checksum = snap.id, snap.checksum
    files = {fmt: snapshot_file(engine, sid, fmt) for fmt in DOWNLOADS}
    assert {f.file_name for f in files.values()} == {
        f"gold-{sid}.parquet",
        f"gold-{sid}.csv",
        f"gold-{sid}.jsonl",
        f"gold-{sid}-hf.zip",
    }
    assert pq.read_table(io.BytesIO(files["parquet"].data)).to_pylist() == table.to_pylist()
    rows = list(csv.DictReader(io.StringIO(files["csv"].data.decode())))
    assert [r["item_id"] for r in rows] == [str(i) for i in table.column("item_id").to_pylist()]
    assert [json.loads(line)["label"] for line in files["jsonl"].data.decode().splitlines()] == table.column(
        "label"
    ).to_pylist()
    with zipfile.ZipFile(io.BytesIO(files["hf"].data)) as zf:
        names = set(zf.namelist())
        assert names == {f"gold-{sid}/README.md", f"gold-{sid}/data/gold-00000-of-00001.parquet"}
        assert checksum in zf.read(f"gold-{sid}/README.md").decode()
    with pytest.raises(AgreementError, match="no gold snapshot"):
        snapshot_file(engine, sid + 99, "csv")
    with pytest.raises(AgreementError, match="format"):
        snapshot_file(engine, sid, "xlsx")


def test_a_stored_snapshot_keeps_its_judge_labels_after_rejudging(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    """Re-judging after a snapshot changes nothing in its export; an updated item is reported."""
    from safereview.agreement.gold import changed_since
    from safereview.db.models import Item, Verdict

    ids = _scene(engine)
    with Session(engine) as s:
        snap, table = create_snapshot(s, SYSTEM, ["g"])
        s.commit()
        sid = snap.id
        assert snap.params["judge_ids"] == {"score": "judge-x"}
        stored = s.exec(select(Gold.judge_label).where(Gold.snapshot_id == sid).order_by(Gold.item_id)).all()
        assert list(stored) == ["safe", "unsafe", None, "safe", "unsafe"]
    with Session(engine) as s:  # the judge is run again and now says otherwise on every item
        for v in s.exec(select(Verdict).where(Verdict.item_id.in_(ids))).all():  # type: ignore[attr-defined]
            v.label = "borderline"
            s.add(v)
        s.commit()
    with Session(engine) as s:
        snap = s.get(GoldSnapshot, sid)
        again = snapshot_table(s, sid)
        assert again.to_pylist() == table.to_pylist()
        assert changed_since(again, snap) is None
    out = tmp_path / "again.parquet"
    r = CliRunner().invoke(app, ["export", "gold", "--snapshot", str(sid), "--out", str(out), "--db", db_url])
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    assert pq.read_table(out).column("judge_label").to_pylist() == ["safe", "unsafe", None, "safe", "unsafe"]

    with Session(engine) as s:  # an import with --update changed an item's attributes since
        item = s.get(Item, ids[0])
        item.category = "re-filed"
        s.add(item)
        s.commit()
    with Session(engine) as s:
        warning = changed_since(snapshot_table(s, sid), s.get(GoldSnapshot, sid))
        assert warning is not None and f"snapshot {sid} no longer matches its checksum" in warning
    r = CliRunner().invoke(app, ["export", "gold", "--snapshot", str(sid), "--out", str(out), "--db", db_url])
    assert r.exit_code == 0 and "no longer matches its checksum" in r.output, r.output

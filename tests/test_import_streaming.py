"""Import streams through the file in chunks: same result as one pass, all or nothing, every bad row named.

The chunk size is made tiny here (3 rows) so that every rule that spans chunks is exercised
on small files: ids unique across chunks, refs to items of earlier and later chunks, a bad
row after chunks already written, conflicts in several chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dataio_support as ds
import pytest
import sqlalchemy as sa
from sqlmodel import Session

from safereview.dataio import importers
from safereview.dataio.importers import import_file
from safereview.workflow.ordering import refresh_priorities
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")


def imp(engine: sa.Engine, path: Path, root: Path, **kw: Any) -> importers.ImportReport:
    kw.setdefault("collection", "c")
    kw.setdefault("taxonomy", "vlsu")
    return import_file(engine, path, media_root=root, actor=SYSTEM, **kw)


def item(i: int, **extra: Any) -> dict[str, Any]:
    row = {
        "id": f"i{i}",
        "prompt_text": f"prompt {i}",
        "response_text": f"response {i}",
        "verdicts": [
            {
                "dimension": "joint",
                "label": ("safe", "borderline", "unsafe")[i % 3],
                "judge_id": "j",
                "probability": 0.5 + i / 100,
            }
        ],
    }
    row.update(extra)
    return row


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """What an import leaves, without ids and times: items, verdicts, annotations, slots, users."""
    q = {
        "item": "SELECT external_id, content_hash, priority, slots_taken, sample_key IS NULL FROM item",
        "verdict": "SELECT i.external_id, v.dimension, v.judge_id, v.label, v.probability FROM verdict v "
        "JOIN item i ON i.id = v.item_id",
        "annotation": "SELECT i.external_id, u.username, a.labels FROM annotation a JOIN item i ON i.id = a.item_id "
        'JOIN "user" u ON u.id = a.user_id',
        "event": "SELECT i.external_id, e.action, e.version FROM annotationevent e JOIN item i ON i.id = e.item_id",
        "assignment": "SELECT i.external_id, s.status FROM assignment s JOIN item i ON i.id = s.item_id",
        "batch": "SELECT n_items, n_verdicts, n_annotations, n_rejected, n_unchanged FROM importbatch",
    }
    with engine.connect() as conn:
        return {k: sorted(tuple(str(x) for x in r) for r in conn.execute(sa.text(v))) for k, v in q.items()}


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importers, "CHUNK_ROWS", 3)


ROWS = [
    {"item_id": "i7", "verdicts": [{"dimension": "text", "label": "safe", "judge_id": "j"}]},  # ref to a later item
    *[item(i) for i in range(5)],
    {"item_id": "i1", "annotations": [{"annotator": "amy", "labels": {"joint": "unsafe"}}]},  # ref to an earlier one
    item(5, annotator="bo", **{"label.joint": "safe"}),
    item(6),
    item(7),
    {"item_id": "i2", "verdicts": [{"dimension": "text", "label": "unsafe", "judge_id": "k"}]},
]


def test_chunked_import_writes_what_one_pass_writes(
    db_url: str, other_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safereview.db.engine import init_db

    f = ds.write_jsonl(tmp_path / "rows.jsonl", ROWS)
    one = init_db(db_url)
    rep1 = imp(one, f, tmp_path / "root")
    assert rep1.ok, rep1.errors
    want = snapshot(one)
    counts1 = rep1.counts()
    one.dispose()
    # the same file in chunks of 3 rows, into a fresh database of the same back end
    monkeypatch.setattr(importers, "CHUNK_ROWS", 3)
    two = init_db(other_db_url)
    rep2 = imp(two, f, tmp_path / "root")
    assert rep2.ok, rep2.errors
    assert rep2.counts() == counts1
    assert snapshot(two) == want
    # the priorities written with new items are what the queue's own refresh computes
    with Session(two) as s:
        assert refresh_priorities(s, 1) == 0
    assert rep2.items_new == 8 and rep2.verdicts_new == 10 and rep2.annotations_new == 2
    assert sum(n.startswith("created ") and "without a usable password" in n for n in rep2.notes) == 1  # one note
    # and again: nothing changes, nothing is written
    rep3 = imp(two, f, tmp_path / "root")
    assert rep3.ok and not rep3.changed and rep3.batch_id is None
    assert rep3.items_unchanged == 8 and rep3.verdicts_unchanged == 10 and rep3.annotations_unchanged == 2
    assert snapshot(two) == want
    two.dispose()


def test_a_bad_row_after_written_chunks_leaves_the_database_as_it_was(
    engine: sa.Engine, tmp_path: Path, tiny_chunks: None
) -> None:
    rows = [item(i) for i in range(8)]
    rows.insert(
        7, {"id": "bad", "prompt_text": "p", "verdicts": [{"dimension": "nope", "label": "x", "judge_id": "j"}]}
    )
    rows.append(item(2))  # a duplicate id, in a later chunk than the first
    f = ds.write_jsonl(tmp_path / "rows.jsonl", rows)
    rep = imp(engine, f, tmp_path / "root")
    assert not rep.ok
    assert [e.split(": ")[0:2] for e in rep.errors] == [[f"{f}:8", "verdicts[0].dimension"], [f"{f}:10", "id"]]
    assert "first at line 3" in rep.errors[1]
    assert rep.items_new == 0 and rep.batch_id is None
    for table in ("item", "verdict", "importbatch", "collection"):
        assert ds.count(engine, table) == 0, table


def test_conflicts_in_several_chunks_are_all_named_and_nothing_is_written(
    engine: sa.Engine, tmp_path: Path, tiny_chunks: None
) -> None:
    first = ds.write_jsonl(tmp_path / "first.jsonl", [item(i) for i in range(9)])
    assert imp(engine, first, tmp_path / "root").ok
    before = snapshot(engine)
    changed = [item(i) for i in range(12)]
    changed[1]["prompt_text"] = "changed one"
    changed[7]["prompt_text"] = "changed seven"
    changed[8]["verdicts"][0]["label"] = "safe" if changed[8]["verdicts"][0]["label"] != "safe" else "unsafe"
    f = ds.write_jsonl(tmp_path / "changed.jsonl", changed)
    rep = imp(engine, f, tmp_path / "root")
    assert not rep.ok
    assert [e.split(": ")[0] for e in rep.errors] == [f"{f}:2", f"{f}:8", f"{f}:9"]
    assert "use --update" in rep.errors[0] and "use --update" in rep.errors[2]
    assert snapshot(engine) == before  # items 9-11 of the later chunks were not written either
    # --skip-invalid: the rest goes in, the three rows are set aside
    rep = imp(engine, f, tmp_path / "root", skip_invalid=True)
    assert rep.ok and rep.items_new == 3 and rep.rejected == 3
    assert ds.count(engine, "item") == 12


def test_ref_rows_across_chunks(engine: sa.Engine, tmp_path: Path, tiny_chunks: None) -> None:
    rows = [
        {"item_id": "i5", "verdicts": [{"dimension": "text", "label": "safe", "judge_id": "k"}]},  # forward
        item(0),
        item(1),
        item(2),
        item(3),
        {"item_id": "i0", "verdicts": [{"dimension": "joint", "label": "safe", "judge_id": "j"}]},  # repeats line 2
        item(4),
        item(5),
        {"item_id": "i5", "verdicts": [{"dimension": "text", "label": "safe", "judge_id": "k"}]},  # repeats line 1
        {"item_id": "nowhere", "verdicts": [{"dimension": "text", "label": "safe", "judge_id": "k"}]},
    ]
    f = ds.write_jsonl(tmp_path / "refs.jsonl", rows)
    rep = imp(engine, f, tmp_path / "root")
    assert not rep.ok
    assert rep.errors == [
        f"{f}:6: verdicts[0]: a verdict of judge 'j' for 'joint' on item 'i0' is already given at line 2",
        f"{f}:9: verdicts[0]: a verdict of judge 'k' for 'text' on item 'i5' is already given at line 1",
        f"{f}:10: item_id: no item 'nowhere' in this collection or file",
    ]
    assert ds.count(engine, "item") == 0
    rep = imp(engine, f, tmp_path / "root", skip_invalid=True)
    assert rep.ok and rep.items_new == 6 and rep.verdicts_new == 7 and rep.rejected == 3
    with engine.connect() as conn:
        got = conn.execute(
            sa.text("SELECT v.judge_id FROM verdict v JOIN item i ON i.id = v.item_id WHERE i.external_id = 'i5'")
        ).scalars()
        assert sorted(got) == ["j", "k"]


def test_a_ref_to_an_item_rejected_in_an_earlier_chunk(engine: sa.Engine, tmp_path: Path, tiny_chunks: None) -> None:
    rows = [
        item(0, annotations=[{"annotator": "amy", "labels": {"joint": "safe"}}]),
        {"item_id": "i0", "annotations": [{"annotator": "amy", "labels": {"joint": "unsafe"}}]},  # the same person
        item(1),
        item(2),
        {"item_id": "i0", "verdicts": [{"dimension": "text", "label": "safe", "judge_id": "k"}]},
    ]
    f = ds.write_jsonl(tmp_path / "r.jsonl", rows)
    rep = imp(engine, f, tmp_path / "root", skip_invalid=True)
    assert rep.ok and rep.items_new == 3 and rep.rejected == 1
    assert rep.errors == [f"{f}:2: annotations[0]: an annotation by 'amy' on item 'i0' is already given at line 1"]

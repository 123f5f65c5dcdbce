"""``safereview import-verdicts``: Uni-Judger output and generic JSONL/CSV, all-or-nothing."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from judge_support import add_item
from sqlmodel import Session, select
from typer.testing import CliRunner

from safereview.cli.main import app
from safereview.db.collections import ensure_collection
from safereview.db.engine import init_db, session_scope
from safereview.db.models import ImportBatch, Item, JudgeConfig, Verdict

runner = CliRunner()


def setup(db_url: str, name: str = "uni", taxonomy: str = "uni-safebench") -> sa.Engine:
    engine = init_db(db_url)
    with session_scope(engine) as s:
        col = ensure_collection(s, name, taxonomy)
        for k in range(4):
            add_item(
                s,
                col.id,
                f"id-{k}",
                prompt=[{"modality": "text", "text": f"q{k}"}],
                response=[{"modality": "text", "text": f"a{k}"}],
            )
    return engine


def labels(engine: sa.Engine) -> dict[tuple[str, str, str], Verdict]:
    with Session(engine) as s:
        return {
            (ext, v.dimension, v.judge_id): v
            for v, ext in s.exec(select(Verdict, Item.external_id).join(Item, Item.id == Verdict.item_id)).all()
        }


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_unijudger_output_imports(db_url: str, tmp_path: Path) -> None:
    engine = setup(db_url)
    f = write_jsonl(
        tmp_path / "bagel_out.jsonl",
        [
            {
                "id": "id-0",
                "context_safety": 0,
                "init_safety": 0,
                "context_reason": "gives the recipe",
                "intention": "get a recipe",
            },
            {"id": "id-1", "context_safety": "2", "init_safety": 1},
            {"id": "id-2", "context_safety": 1},
        ],
    )
    r = runner.invoke(app, ["import-verdicts", str(f), "--format", "unijudger", "--collection", "uni", "--db", db_url])
    assert r.exit_code == 0, r.output
    got = labels(engine)
    jid = "imported:unijudger:bagel_out"
    assert {k: v.label for k, v in got.items()} == {
        ("id-0", "contextual", jid): "unsafe",
        ("id-0", "intrinsic", jid): "unsafe",
        ("id-1", "contextual", jid): "refusal",
        ("id-1", "intrinsic", jid): "safe",
        ("id-2", "contextual", jid): "safe",
    }
    v0 = got[("id-0", "contextual", jid)]
    assert v0.rationale == "gives the recipe" and v0.intent == "get a recipe" and v0.import_batch_id is not None
    with Session(engine) as s:
        batch = s.exec(select(ImportBatch)).one()
        assert batch.n_verdicts == 5 and batch.format == "verdicts-unijudger"
        assert s.get(JudgeConfig, jid).protocol == "imported"
    # re-import replaces, never duplicates
    r = runner.invoke(app, ["import-verdicts", str(f), "--format", "unijudger", "--collection", "uni", "--db", db_url])
    assert r.exit_code == 0 and len(labels(engine)) == 5
    engine.dispose()


def test_generic_csv_and_jsonl(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'g.db'}"
    engine = setup(db_url, "v", "vlsu")
    csv_file = tmp_path / "v.csv"
    csv_file.write_text(
        "item_id,dimension,label,probability,rationale,judge_id\n"
        'id-0,joint,unsafe,0.9,"bad, together",gpt-x\n'
        "id-0,image,safe,,,gpt-x\n"
        "id-1,joint,borderline,0.5,,\n",
        encoding="utf-8",
    )
    r = runner.invoke(
        app,
        [
            "import-verdicts",
            str(csv_file),
            "--format",
            "generic",
            "--collection",
            "v",
            "--judge-id",
            "fallback",
            "--db",
            db_url,
        ],
    )
    assert r.exit_code == 0, r.output
    got = labels(engine)
    assert got[("id-0", "joint", "gpt-x")].probability == 0.9
    assert got[("id-0", "joint", "gpt-x")].rationale == "bad, together"
    assert got[("id-0", "image", "gpt-x")].probability is None
    assert got[("id-1", "joint", "fallback")].label == "borderline"
    f = write_jsonl(tmp_path / "g.jsonl", [{"item_id": "id-3", "dimension": "text", "label": "unsafe"}])
    r = runner.invoke(app, ["import-verdicts", str(f), "--format", "generic", "--collection", "v", "--db", db_url])
    assert r.exit_code == 0, r.output
    assert labels(engine)[("id-3", "text", "imported:generic:g")].label == "unsafe"
    engine.dispose()


def test_every_problem_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'e.db'}"
    engine = setup(db_url)
    f = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"id": "id-0", "context_safety": 1, "init_safety": 1},  # fine, but must not be written
            {"id": "nope", "context_safety": 1},
            {"context_safety": 1},
            {"id": "id-1", "context_safety": 3},
            {"id": "id-2", "init_safety": 2},
            "{broken json",
            {"id": "id-3"},
            {"id": "id-0", "context_safety": 0},  # a second record of id-0: merged, not a problem
            "[1, 2]",
        ],
    )
    r = runner.invoke(app, ["import-verdicts", str(f), "--format", "unijudger", "--collection", "uni", "--db", db_url])
    assert r.exit_code == 1
    err = r.stderr
    for expected in (
        f"{f}:2: id: no item 'nope'",
        f"{f}:3: id: required",
        f"{f}:4: context_safety: must be one of",
        f"{f}:5: init_safety: must be one of",
        f"{f}:6: (json): not valid JSON",
        f"{f}:7: context_safety: neither",
        f"{f}:9: (json): expected an object",
    ):
        assert expected in err, (expected, err)
    assert "7 problems; nothing imported" in err
    with Session(engine) as s:
        assert s.exec(select(Verdict)).all() == [] and s.exec(select(ImportBatch)).all() == []


def test_generic_validation_messages(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'e2.db'}"
    setup(db_url, "v", "vlsu")
    f = tmp_path / "bad.csv"
    f.write_text(
        "item_id,dimension,label,probability\n"
        "id-0,joint,maybe,\n"
        "id-0,colour,safe,\n"
        "id-1,joint,safe,1.5\n"
        ",joint,safe,\n",
        encoding="utf-8",
    )
    r = runner.invoke(app, ["import-verdicts", str(f), "--format", "generic", "--collection", "v", "--db", db_url])
    assert r.exit_code == 1
    assert f"{f}:2: label: must be one of safe, borderline, unsafe" in r.stderr
    assert f"{f}:3: dimension: must be one of image, text, joint" in r.stderr
    assert f"{f}:4: probability: must be a number from 0 to 1" in r.stderr
    assert f"{f}:5: item_id: required" in r.stderr
    r = runner.invoke(app, ["import-verdicts", str(f), "--format", "nonsense", "--collection", "v", "--db", db_url])
    assert r.exit_code == 1 and "format: must be one of" in r.stderr
    r = runner.invoke(app, ["import-verdicts", str(f), "--format", "generic", "--collection", "zzz", "--db", db_url])
    assert r.exit_code == 1 and "no collection named 'zzz'" in r.stderr


def _priorities(engine: sa.Engine) -> dict[str, float]:
    with Session(engine) as s:
        return dict(s.exec(select(Item.external_id, Item.priority)).all())


def test_import_verdicts_has_the_same_rule_as_import_unchanged_kept_changed_refused(
    db_url: str, tmp_path: Path
) -> None:
    """One semantics for verdicts: identical ones are left alone, changed ones need --update,
    and the queue re-ranks what changed in the same transaction."""
    engine = setup(db_url)
    rows = [
        {"item_id": "id-0", "dimension": "contextual", "label": "safe", "probability": 0.55, "judge_id": "j"},
        {"item_id": "id-1", "dimension": "contextual", "label": "unsafe", "probability": 0.9, "judge_id": "j"},
    ]
    f = write_jsonl(tmp_path / "v.jsonl", rows)
    args = ["import-verdicts", str(f), "--format", "generic", "--collection", "uni", "--db", db_url]
    before = _priorities(engine)
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "2 new, 0 replaced, 0 unchanged" in r.output, r.output
    ranked = _priorities(engine)
    assert ranked["id-0"] != before["id-0"] and ranked["id-0"] > ranked["id-2"], "the queue was not re-ranked"

    r = runner.invoke(app, args)  # the same file again: nothing to do, no error
    assert r.exit_code == 0 and "0 new, 0 replaced, 2 unchanged" in r.output, r.output

    rows[1]["label"] = "safe"
    write_jsonl(f, rows)
    r = runner.invoke(app, args)
    assert r.exit_code == 1
    assert f"{f}:2: label: verdict of judge 'j' for item 'id-1' (contextual) differs" in r.output
    assert "nothing imported" in r.output
    assert labels(engine)[("id-1", "contextual", "j")].label == "unsafe"

    r = runner.invoke(app, [*args, "--update"])
    assert r.exit_code == 0 and "0 new, 1 replaced, 1 unchanged" in r.output, r.output
    assert labels(engine)[("id-1", "contextual", "j")].label == "safe"
    with Session(engine) as s:
        assert len(s.exec(select(ImportBatch)).all()) == 2  # neither the no-op nor the refused run wrote one

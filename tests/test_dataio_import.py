"""Import: every format round-trips, bad input never half-imports, re-import is idempotent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import dataio_support as ds
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from safereview.cli.main import app
from safereview.dataio.importers import import_file
from safereview.db.models import (
    Annotation,
    AnnotationEvent,
    Assignment,
    ImportBatch,
    Item,
    JudgeConfig,
    Media,
    User,
    Verdict,
)
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be

LINE_RE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>[^:]+): (?P<msg>.+)$")


def rows(engine: sa.Engine, model: Any, *where: Any) -> list[Any]:
    t = model.__table__
    with engine.connect() as conn:
        return conn.execute(sa.select(t).where(*where).order_by(*t.primary_key.columns)).all()


@pytest.fixture
def media(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    ds.png(d / "cat.png", color=(10, 200, 10))
    ds.png(d / "dog.png", color=(10, 10, 200))
    ds.wav(d / "beep.wav")
    ds.video(d / "clip.mp4")
    return d


def imp(engine: sa.Engine, path: Path, root: Path, **kw: Any):  # type: ignore[no-untyped-def]
    kw.setdefault("collection", "c")
    kw.setdefault("taxonomy", "vlsu")
    return import_file(engine, path, media_root=root, actor=SYSTEM, **kw)


GENERIC = [
    {
        "id": "a",
        "category": "C9: Interpersonal Violence",
        "model": "m1",
        "prompt": [{"modality": "image", "path": "cat.png"}, {"modality": "text", "text": "what is this?"}],
        "response": [{"modality": "text", "text": "a cat"}],
        "meta": {"source": "unit"},
        "verdicts": [
            {
                "dimension": "joint",
                "label": "borderline",
                "judge_id": "j1",
                "probability": 0.55,
                "probs": {"safe": 0.3, "borderline": 0.55, "unsafe": 0.15},
                "rationale": "hmm",
            },
            {"dimension": "image", "label": None, "status": "unparseable", "judge_id": "j1", "raw_output": "Result: ?"},
        ],
        "annotations": [
            {
                "annotator": "zoe",
                "labels": {"joint": "safe", "image": "safe"},
                "blind_labels": {"joint": "borderline"},
                "categories": ["interpersonal violence"],
                "rationale": "fine",
                "time_spent_s": 3.5,
                "verdict_action": "override",
            }
        ],
    },
    {
        "id": "b",
        "prompt_audio": "beep.wav",
        "prompt_text": "listen",
        "response_video": "clip.mp4",
        "verdict.joint": "unsafe",
        "verdict.joint.prob": 0.9,
        "judge_id": "j1",
    },
    {"id": "c", "prompt": "just text", "response_image": "dog.png", "refused": False},
]


def test_generic_jsonl_round_trip(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    f = ds.write_jsonl(media / "items.jsonl", GENERIC)
    rep = imp(engine, f, tmp_path / "root", model="default-model")
    assert rep.ok, rep.errors
    assert (rep.items_new, rep.verdicts_new, rep.annotations_new, rep.users_created) == (3, 3, 1, 1)
    items = {r.external_id: r for r in rows(engine, Item)}
    a, b, c = items["a"], items["b"], items["c"]
    assert a.prompt[0]["modality"] == "image" and len(a.prompt[0]["media"]) == 64
    assert a.prompt[0]["name"] == "cat.png" and a.prompt[1] == {"modality": "text", "text": "what is this?"}
    assert (a.category, a.subcategory, a.task_type, a.model) == ("Interpersonal Violence", "", "image-text", "m1")
    assert (a.input_modalities, a.output_modalities, a.meta) == ("image+text", "text", {"source": "unit"})
    assert (b.input_modalities, b.output_modalities, b.model) == ("audio+text", "video", "default-model")
    assert c.prompt == [{"modality": "text", "text": "just text"}] and c.response[0]["modality"] == "image"
    kinds = {m.kind: m for m in rows(engine, Media)}
    assert set(kinds) == {"image", "audio", "video"}
    assert kinds["audio"].sample_rate == 8000 and kinds["video"].width == 32
    for m in rows(engine, Media):
        assert (tmp_path / "root" / f"{m.sha256[:2]}/{m.sha256[2:4]}/{m.sha256}.{m.ext}").is_file()
    vs = {(v.item_id, v.dimension): v for v in rows(engine, Verdict)}
    assert vs[(a.id, "joint")].probs == {"safe": 0.3, "borderline": 0.55, "unsafe": 0.15}
    assert vs[(a.id, "image")].label is None and vs[(a.id, "image")].status == "unparseable"
    assert vs[(b.id, "joint")].probability == 0.9
    assert {j.id: j.protocol for j in rows(engine, JudgeConfig)} == {"j1": "imported"}
    (user,) = rows(engine, User)
    assert user.username == "zoe" and user.password_hash.startswith("!") and user.role == "annotator"
    (ann,) = rows(engine, Annotation)
    assert (ann.source, ann.labels, ann.blind_labels, ann.categories) == (
        "import",
        {"joint": "safe", "image": "safe"},
        {"joint": "borderline"},
        ["Interpersonal Violence"],
    )
    assert (ann.verdict_action, ann.time_spent_s, ann.version) == ("override", 3.5, 1)
    (ev,) = rows(engine, AnnotationEvent)
    assert (ev.action, ev.before, ev.after["labels"]) == ("import", None, {"joint": "safe", "image": "safe"})
    assert (ev.actor_id, ev.recorded_by) == (user.id, "test"), "the event names the importer, not only zoe"
    (asg,) = rows(engine, Assignment)
    assert (asg.status, asg.stratum, asg.sampling_prob, asg.item_id) == ("done", "imported", None, a.id)
    assert items["a"].slots_taken == 1 and items["b"].slots_taken == 0
    # verdicts were written, so the borderline-first priorities were recomputed (workflow.ordering)
    assert rep.priorities_refreshed and items["a"].priority > 0 and items["c"].priority == 0
    (batch,) = rows(engine, ImportBatch)
    assert (batch.n_items, batch.n_verdicts, batch.n_annotations, batch.format) == (3, 3, 1, "generic-jsonl")
    assert all(r.import_batch_id == batch.id for r in items.values())


def _flat(rows_: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    header = [
        "id",
        "task_type",
        "category",
        "prompt_image",
        "prompt_text",
        "response_text",
        "judge_id",
        "verdict.joint",
        "verdict.joint.prob",
        "annotator",
        "label.joint",
        "label.text",
    ]
    return header, [[r.get(h) for h in header] for r in rows_]


FLAT = [
    {
        "id": "x1",
        "task_type": "Image-text pair",
        "category": "C3",
        "prompt_image": "cat.png",
        "prompt_text": "hi",
        "response_text": "hello",
        "judge_id": "jx",
        "verdict.joint": "safe",
        "verdict.joint.prob": 0.2,
        "annotator": "amy",
        "label.joint": "safe",
        "label.text": "borderline",
    },
    {
        "id": "x2",
        "task_type": "image_text",
        "prompt_image": "dog.png",
        "prompt_text": "multi\nline",
        "judge_id": "jx",
        "verdict.joint": "unsafe",
    },
]


def test_generic_csv_and_parquet_give_identical_items(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    import pandas as pd

    header, data = _flat(FLAT)
    csv_f = ds.write_csv(media / "items.csv", header, [["" if v is None else v for v in r] for r in data])
    pq_f = media / "items.parquet"
    pd.DataFrame(data, columns=header).to_parquet(pq_f)
    r1 = imp(engine, csv_f, tmp_path / "root", collection="csv")
    r2 = imp(engine, pq_f, tmp_path / "root", collection="pq")
    assert r1.ok and r2.ok, r1.errors + r2.errors
    assert (
        (r1.items_new, r1.verdicts_new, r1.annotations_new)
        == (2, 2, 1)
        == (r2.items_new, r2.verdicts_new, r2.annotations_new)
    )
    by_col: dict[int, dict[str, Any]] = {}
    for it in rows(engine, Item):
        by_col.setdefault(it.collection_id, {})[it.external_id] = it
    c1, c2 = by_col.values()
    for ext in ("x1", "x2"):
        assert c1[ext].content_hash == c2[ext].content_hash
        assert c1[ext].prompt == c2[ext].prompt
    assert c1["x2"].prompt[1]["text"] == "multi\nline"
    assert c1["x1"].category == "Drug Abuse"
    assert {a.labels["text"] for a in rows(engine, Annotation)} == {"borderline"}


def test_separate_annotation_and_verdict_files(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    items = ds.write_jsonl(media / "items.jsonl", [{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"}])
    anns = ds.write_csv(
        media / "anns.csv",
        ["item_id", "annotator", "label.joint", "categories", "rationale"],
        [["a", "amy", "unsafe", "C9;C10", "r1"], ["a", "bo", "safe", "", ""], ["b", "amy", "borderline", "", ""]],
    )
    verdicts = ds.write_jsonl(
        media / "v.jsonl", [{"item_id": "b", "verdicts": [{"dimension": "joint", "label": "safe", "judge_id": "j2"}]}]
    )
    root = tmp_path / "root"
    assert imp(engine, items, root).ok
    r = imp(engine, anns, root)
    assert r.ok and r.annotations_new == 3 and r.users_created == 2, r.errors
    assert imp(engine, verdicts, root).verdicts_new == 1
    slots = {i.external_id: i.slots_taken for i in rows(engine, Item)}
    assert slots == {"a": 2, "b": 1}
    cats = {a.rationale: a.categories for a in rows(engine, Annotation)}
    assert cats["r1"] == ["Interpersonal Violence", "Weapons and Dangerous Objects"]
    bad = ds.write_csv(media / "bad.csv", ["item_id", "annotator", "label.joint"], [["zzz", "amy", "safe"]])
    rep = imp(engine, bad, root)
    assert not rep.ok and rep.errors == [f"{bad}:2: item_id: no item 'zzz' in this collection or file"]


# ---- Uni-SafeBench -------------------------------------------------------------------


def test_unisafebench_task_type_from_name_and_flag(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    root = tmp_path / "root"
    ds.png(media / "in.png")
    f1 = ds.write_jsonl(media / "Composite_Unsafe.jsonl", ds.uni_rows(2))
    (media / "dual-unsafe").mkdir()
    ds.png(media / "dual-unsafe" / "in.png")
    f2 = ds.write_jsonl(media / "dual-unsafe" / "outputs.jsonl", ds.uni_rows(1))
    t2i = [
        {
            "id": "t1",
            "prompt": "draw",
            "image": "",
            "category": "Politics",
            "generated_text": "",
            "output_image": "cat.png",
            "intention": "i",
            "reject_image": False,
        },
        {
            "id": "t2",
            "prompt": "draw more",
            "image": "",
            "category": "Politics",
            "generated_text": "",
            "output_image": "",
            "intention": "i",
            "reject_image": True,
        },
    ]
    f3 = ds.write_jsonl(media / "results.jsonl", t2i)
    kw = {"collection": "uni", "taxonomy": "uni-safebench"}
    assert imp(engine, f1, root, **kw).ok
    assert imp(engine, f2, root, media_dir=media / "dual-unsafe", **kw).ok
    rep = imp(engine, f3, root, **kw)
    assert not rep.ok
    assert rep.errors == [
        f"{f3}: task_type: cannot tell the task type from the file or folder name; pass "
        "--task-type (one of malicious-text-generation, unsafe-t2i-generation, "
        "malicious-image-editing, dual-unsafe, image-unsafe, text-unsafe, composite-unsafe)"
    ]
    assert imp(engine, f3, root, task_type="Unsafe T2I generation", **kw).ok
    by_id = {i.external_id: i for i in rows(engine, Item)}
    # Uni-SafeBench numbers rows per task file, so ids are namespaced by task type
    assert set(by_id) == {
        "composite-unsafe/u0",
        "composite-unsafe/u1",
        "dual-unsafe/u0",
        "unsafe-t2i-generation/t1",
        "unsafe-t2i-generation/t2",
    }
    u1 = by_id["composite-unsafe/u1"]
    assert (u1.task_type, u1.category, u1.subcategory) == ("composite-unsafe", "Toxicity Content", "Blood and Violence")
    assert u1.meta == {"intention": "x"} and u1.model == ""
    assert [p["modality"] for p in u1.prompt] == ["image", "text"]
    t1, t2 = by_id["unsafe-t2i-generation/t1"], by_id["unsafe-t2i-generation/t2"]
    assert t2.refused and t2.response == [] and t2.output_modalities == "image"
    assert t1.response[0]["modality"] == "image" and not t1.refused


# ---- VLSU ----------------------------------------------------------------------------

VLSU_HEADER = [
    "uuid",
    "web_path",
    "prompt",
    "image_grade",
    "consensus_text_grade",
    "consensus_combined_grade",
    "image_category",
    "text_category",
    "combined_category",
]


def test_vlsu_images_by_uuid_or_url_name(engine: sa.Engine, tmp_path: Path) -> None:
    imgs = tmp_path / "vlsu_images"
    ds.png(imgs / "sub" / "11111111-aaaa.webp", fmt="WEBP")
    ds.png(imgs / "pic_22.jpg", fmt="JPEG")
    f = ds.write_csv(
        tmp_path / "vlsu.csv",
        VLSU_HEADER,
        [
            [
                "11111111-aaaa",
                "https://dead.example/x.png",
                "nice day",
                "safe",
                "safe",
                "unsafe",
                "",
                "",
                "C9: Interpersonal Violence",
            ],
            [
                "22222222-bbbb",
                "https://dead.example/img/pic_22.jpg?x=1",
                "hmm",
                "borderline",
                "not_sure",
                "borderline",
                "C10: Weapons and Dangerous Objects",
                "",
                "C10: Weapons and Dangerous Objects",
            ],
        ],
    )
    rep = imp(engine, f, tmp_path / "root", media_dir=imgs, format="auto", collection="v")
    assert rep.ok and rep.format == "vlsu" and rep.annotations_new == 2, rep.errors
    items = {i.external_id: i for i in rows(engine, Item)}
    assert items["11111111-aaaa"].prompt[0]["name"] == "11111111-aaaa.webp"
    assert items["22222222-bbbb"].meta["vlsu"]["not_sure"] == ["text"]
    assert items["22222222-bbbb"].category == "Weapons and Dangerous Objects"
    anns = {a.item_id: a for a in rows(engine, Annotation)}
    assert anns[items["11111111-aaaa"].id].labels == {"image": "safe", "text": "safe", "joint": "unsafe"}
    assert anns[items["22222222-bbbb"].id].labels == {"image": "borderline", "joint": "borderline"}
    assert anns[items["11111111-aaaa"].id].categories == ["Interpersonal Violence"]
    (u,) = rows(engine, User)
    assert (u.username, u.role, u.password_hash[0]) == ("vlsu-consensus", "annotator", "!")


def test_vlsu_missing_image_error_then_skip_invalid(engine: sa.Engine, tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    ds.png(imgs / "ok-1.png")
    f = ds.write_csv(
        tmp_path / "vlsu.csv",
        VLSU_HEADER,
        [
            ["ok-1", "https://x/ok-1.png", "a", "safe", "safe", "safe", "", "", ""],
            ["gone-2", "https://x/gone.png", "b", "safe", "safe", "safe", "", "", ""],
        ],
    )
    before = ds.snapshot(engine)
    rep = imp(engine, f, tmp_path / "root", media_dir=imgs, collection="v")
    assert not rep.ok
    assert rep.errors == [
        f"{f}:3: web_path: image missing: no gone-2.<png|jpg|jpeg|webp|gif> or gone.png in "
        f"{imgs.resolve()} (the importer never downloads)"
    ]
    assert ds.snapshot(engine) == before
    rj = tmp_path / "rejects.jsonl"
    rep = imp(engine, f, tmp_path / "root", media_dir=imgs, collection="v", skip_invalid=True, rejects_path=rj)
    assert rep.ok and rep.items_new == 1 and rep.rejected == 1
    (line,) = [json.loads(x) for x in rj.read_text().splitlines()]
    assert line["line"] == 3 and line["row"]["uuid"] == "gone-2" and "image missing" in line["errors"][0]


# ---- bad input never half-imports ------------------------------------------------------


def _bad_cases(media: Path) -> dict[str, tuple[Path, str, str]]:
    ds.truncated(ds.png(media / "big.png", size=(300, 300)), media / "broken.png", 0.3)
    from PIL import Image

    Image.effect_noise((300, 300), 90).convert("RGB").save(media / "big.png")
    ds.truncated(media / "big.png", media / "broken.png", 0.3)
    (media.parent / "outside.png").write_bytes((media / "cat.png").read_bytes())
    good = {"id": "g1", "prompt": "fine"}
    return {
        "broken_json": (ds.write_jsonl(media / "j.jsonl", [good, '{"id": "g2", "prompt": "x"']), "2", "(json)"),
        "unknown_task_type": (
            ds.write_jsonl(media / "t.jsonl", [good, {"id": "g2", "prompt": "x", "task_type": "nope"}]),
            "2",
            "task_type",
        ),
        "missing_media": (
            ds.write_csv(
                media / "m.csv", ["id", "prompt_text", "prompt_image"], [["g1", "fine", ""], ["g2", "x", "nothere.png"]]
            ),
            "3",
            "prompt_image",
        ),
        "corrupt_png": (
            ds.write_jsonl(
                media / "c.jsonl", [good, {"id": "g2", "prompt": [{"modality": "image", "path": "broken.png"}]}]
            ),
            "2",
            "prompt[0].path",
        ),
        "escape": (
            ds.write_jsonl(
                media / "e.jsonl", [good, {"id": "g2", "prompt_text": "x", "prompt_image": "../outside.png"}]
            ),
            "2",
            "prompt_image",
        ),
    }


MESSAGES = {
    "broken_json": "invalid JSON",
    "unknown_task_type": "unknown task type 'nope'",
    "missing_media": "file not found: nothere.png",
    "corrupt_png": "corrupt or truncated image",
    "escape": "contains '..'",
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_bad_input_reports_one_precise_error_and_changes_nothing(
    db_url: str, tmp_path: Path, media: Path, case: str
) -> None:
    from safereview.db.engine import init_db

    engine = init_db(db_url)
    root = tmp_path / "root"
    seed = ds.write_jsonl(media / "seed.jsonl", [{"id": "s", "prompt": "seed", "response_image": "cat.png"}])
    assert imp(engine, seed, root).ok
    files_before = sorted(root.rglob("*"))
    before = ds.snapshot(engine)
    path, line, fld = _bad_cases(media)[case]
    result = CliRunner().invoke(
        app, ["import", str(path), "--collection", "c", "--taxonomy", "vlsu", "--db", db_url, "--media-root", str(root)]
    )
    assert result.exit_code == 1, result.output
    errors = [ln for ln in result.output.splitlines() if LINE_RE.match(ln)]
    assert len(errors) == 1, result.output
    (summary,) = [ln.split() for ln in result.output.splitlines() if " FAILED " in ln]
    assert summary[0] == path.name and summary[3:] == ["-"] * 6, result.output  # nothing imported, no batch
    m = LINE_RE.match(errors[0])
    assert m is not None
    assert (m["file"], m["line"], m["field"]) == (str(path), line, fld)
    assert MESSAGES[case] in m["msg"]
    assert ds.snapshot(engine) == before
    assert sorted(root.rglob("*")) == files_before
    engine.dispose()


def test_every_problem_is_reported_not_just_the_first(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    f = ds.write_jsonl(
        media / "many.jsonl",
        [
            {"id": "1", "prompt": "a", "verdicts": [{"dimension": "joint", "label": "maybe", "judge_id": "j"}]},
            "not json",
            {"id": "3", "prompt": "c", "verdict.vibes": "safe", "judge_id": "j"},
            {"id": "1", "prompt": "dup"},
            {"id": "5", "prompt": "e", "annotations": [{"annotator": "x", "labels": {"joint": "bad"}}]},
            {"id": "6", "promt_text": "typo"},
        ],
    )
    rep = imp(engine, f, tmp_path / "root")
    assert not rep.ok
    assert [e.split(": ", 2)[:2] for e in rep.errors] == [
        [f"{f}:1", "verdicts[0].label"],
        [f"{f}:2", "(json)"],
        [f"{f}:3", "verdict.vibes"],
        [f"{f}:4", "id"],
        [f"{f}:5", "annotations[0].labels.joint"],
        [f"{f}:6", "promt_text"],
    ]
    assert ds.count(engine, "item") == 0 and ds.count(engine, "collection") == 0


def test_csv_line_numbers_count_physical_lines(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    f = ds.write_csv(
        media / "ml.csv", ["id", "prompt_text", "task_type"], [["1", "two\nlines", ""], ["2", "x", "bogus"]]
    )
    rep = imp(engine, f, tmp_path / "root")
    assert rep.errors and rep.errors[0].startswith(f"{f}:4: task_type: unknown task type 'bogus'")


def test_parquet_errors_name_the_row_index(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    import pandas as pd

    f = media / "p.parquet"
    pd.DataFrame({"id": ["1", "2"], "prompt_text": ["a", None], "response_text": ["x", "y"]}).to_parquet(f)
    rep = imp(engine, f, tmp_path / "root")
    assert rep.errors == [f"{f}:1: prompt: an item needs at least one prompt part (parquet row index, 0-based)"]


def test_skip_invalid_imports_good_rows_and_writes_rejects(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    f = ds.write_jsonl(
        media / "s.jsonl",
        [{"id": "1", "prompt": "a"}, "{broken", {"id": "3", "prompt_image": "missing.png"}, {"id": "4", "prompt": "d"}],
    )
    rep = imp(engine, f, tmp_path / "root", skip_invalid=True)
    assert rep.ok and rep.items_new == 2 and rep.rejected == 2
    rj = [json.loads(x) for x in Path(rep.rejects_path or "").read_text().splitlines()]
    assert [(r["line"], r["row"]) for r in rj] == [(2, "{broken"), (3, {"id": "3", "prompt_image": "missing.png"})]
    assert "file not found" in rj[1]["errors"][0]
    assert {i.external_id for i in rows(engine, Item)} == {"1", "4"}
    assert rows(engine, ImportBatch)[0].n_rejected == 2


# ---- idempotency, conflicts, --update ------------------------------------------------


def test_reimport_is_idempotent(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    f = ds.write_jsonl(media / "items.jsonl", GENERIC)
    assert imp(engine, f, tmp_path / "root").ok
    before = ds.snapshot(engine)
    rep = imp(engine, f, tmp_path / "root")
    assert rep.ok and not rep.changed and rep.batch_id is None
    assert (rep.items_unchanged, rep.verdicts_unchanged, rep.annotations_unchanged) == (3, 3, 1)
    assert ds.snapshot(engine) == before


def test_changed_content_is_a_conflict_unless_update(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    root = tmp_path / "root"
    f = ds.write_jsonl(media / "items.jsonl", GENERIC)
    assert imp(engine, f, root).ok
    changed = json.loads(json.dumps(GENERIC))
    changed[2]["prompt"] = "different text"
    changed[1]["verdict.joint"] = "safe"
    changed[0]["annotations"][0]["labels"]["joint"] = "unsafe"
    changed[0]["prompt"][0]["path"] = "dog.png"  # new media for a conflicting row: must not be left behind
    f2 = ds.write_jsonl(media / "items2.jsonl", changed)
    before, files = ds.snapshot(engine), sorted(root.rglob("*"))
    rep = imp(engine, f2, root)
    assert not rep.ok
    assert [e.split(": ")[1] for e in rep.errors] == ["id", "verdict.joint", "id"]
    assert "already exists with different content" in rep.errors[0] and "--update" in rep.errors[0]
    assert "verdict of judge 'j1' for 'joint' differs from the stored one" in rep.errors[1]
    assert ds.snapshot(engine) == before and sorted(root.rglob("*")) == files
    rep = imp(engine, f2, root, update=True)
    assert rep.ok and rep.items_updated == 2 and rep.verdicts_updated == 1 and rep.annotations_updated == 1
    assert rep.items_unchanged == 1
    assert any("--update" in n for n in rep.notes)
    items = {i.external_id: i for i in rows(engine, Item)}
    assert items["c"].prompt == [{"modality": "text", "text": "different text"}]
    (ann,) = rows(engine, Annotation)
    assert ann.labels["joint"] == "unsafe" and ann.version == 2
    evs = rows(engine, AnnotationEvent)
    assert [e.action for e in evs] == ["import", "import"] and evs[1].before["labels"]["joint"] == "safe"


def test_update_of_an_app_label_names_the_importer_and_keeps_provenance(
    engine: sa.Engine, tmp_path: Path, media: Path
) -> None:
    """An import that replaces a label someone made in the app is the importer's change:
    the event must not name the annotator as its actor (their Undo would then revert it),
    and the row must not keep claiming ``source=app``."""
    from sqlmodel import Session
    from workflow_support import make_user

    from safereview.workflow import annotations, queue

    root = tmp_path / "root"
    items = ds.write_jsonl(media / "i.jsonl", [{"id": "a", "prompt": "p"}])
    assert imp(engine, items, root).ok
    amy = make_user(engine, "amy")
    with Session(engine) as s:
        cid = s.exec(sa.select(Item.collection_id)).scalar_one()
    from safereview.workflow.query_cache import clear_caches

    clear_caches()
    with Session(engine) as s:
        a = queue.next_item(s, amy, queue.QueueFilter(cid))
        assert a is not None
        annotations.submit(s, amy, a.id, {"image": "safe", "text": "safe", "joint": "safe"})
        s.commit()
    (ann,) = rows(engine, Annotation)
    assert ann.source == "app"
    anns = ds.write_csv(
        media / "anns.csv",
        ["item_id", "annotator", "label.image", "label.text", "label.joint"],
        [["a", "amy", "safe", "safe", "unsafe"]],
    )
    rep = imp(engine, anns, root, update=True)
    assert rep.ok and rep.annotations_updated == 1, rep.errors
    (ann,) = rows(engine, Annotation)
    assert (ann.labels["joint"], ann.source, ann.version) == ("unsafe", "import", 2)
    ev = rows(engine, AnnotationEvent)[-1]
    assert (ev.action, ev.actor_id, ev.recorded_by) == ("import", None, "test")
    assert ev.before["source"] == "app" and ev.before["labels"]["joint"] == "safe"
    assert ev.before["annotator_id"] == amy.id
    with Session(engine) as s:  # amy's Undo has nothing of hers to revert: the change is not hers
        assert annotations.undo_last(s, amy) is None


def test_a_large_import_refreshes_the_planners_statistics(
    engine: sa.Engine, tmp_path: Path, media: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a big import the planner must know the tables' sizes (SQLite planned a walk over
    every item per priority chunk without them). Small imports skip it: it is not free."""
    import safereview.dataio.importers as importers

    rows = [{"id": f"s{k}", "prompt": "p"} for k in range(300)]
    monkeypatch.setattr(importers, "ANALYZE_AFTER_ROWS", 301)
    assert imp(engine, ds.write_jsonl(media / "a.jsonl", rows), tmp_path / "root").ok
    query = (
        "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'item'"
        if engine.dialect.name == "sqlite"
        else "SELECT count(*) FROM pg_stats WHERE tablename = 'item' AND schemaname = current_schema()"
    )

    def stats() -> int:
        with engine.connect() as conn:
            try:
                return int(conn.exec_driver_sql(query).scalar_one())
            except sa.exc.OperationalError:  # SQLite: no sqlite_stat1 table before the first ANALYZE
                return 0

    if engine.dialect.name == "sqlite":  # (PostgreSQL's autovacuum may analyse on its own meanwhile)
        assert stats() == 0
    monkeypatch.setattr(importers, "ANALYZE_AFTER_ROWS", 300)
    more = [{"id": f"t{k}", "prompt": "p"} for k in range(300)]
    assert imp(engine, ds.write_jsonl(media / "b.jsonl", more), tmp_path / "root").ok
    assert stats() > 0


def test_verdicts_keyed_by_item_dimension_judge(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    root = tmp_path / "root"
    items = ds.write_jsonl(media / "i.jsonl", [{"id": "a", "prompt": "p"}])
    assert imp(engine, items, root).ok
    v1 = ds.write_jsonl(
        media / "v1.jsonl", [{"item_id": "a", "verdicts": [{"dimension": "joint", "label": "safe", "judge_id": "j1"}]}]
    )
    v2 = ds.write_jsonl(
        media / "v2.jsonl",
        [{"item_id": "a", "verdicts": [{"dimension": "joint", "label": "unsafe", "judge_id": "j2"}]}],
    )
    v1b = ds.write_jsonl(
        media / "v1b.jsonl",
        [{"item_id": "a", "verdicts": [{"dimension": "joint", "label": "unsafe", "judge_id": "j1"}]}],
    )
    assert imp(engine, v1, root).verdicts_new == 1
    assert imp(engine, v1, root).verdicts_unchanged == 1
    assert imp(engine, v2, root).verdicts_new == 1
    rep = imp(engine, v1b, root)
    assert not rep.ok and "differs from the stored one" in rep.errors[0]
    assert imp(engine, v1b, root, update=True).verdicts_updated == 1
    assert sorted((v.judge_id, v.label) for v in rows(engine, Verdict)) == [("j1", "unsafe"), ("j2", "unsafe")]


def test_cli_imports_several_files_and_prints_summary(db_url: str, tmp_path: Path, media: Path) -> None:
    items = ds.write_jsonl(media / "items.jsonl", [{"id": "a", "prompt": "p"}])
    anns = ds.write_csv(media / "anns.csv", ["item_id", "annotator", "label.joint"], [["a", "amy", "safe"]])
    res = CliRunner().invoke(
        app,
        [
            "import",
            str(items),
            str(anns),
            "-c",
            "cli",
            "-t",
            "vlsu",
            "--db",
            db_url,
            "--media-root",
            str(tmp_path / "root"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "[generic]" in res.output and "new/updated/unchanged" in res.output
    rows = {line.split()[0]: line.split()[1:] for line in res.output.splitlines() if line.startswith(("items", "anns"))}
    assert rows["items.jsonl"][:2] == ["1", "1/0/0"] and rows["anns.csv"][3] == "1/0/0"  # rows, items; labels
    assert max(len(line) for line in res.output.splitlines()) <= 80  # fits a terminal
    res = CliRunner().invoke(app, ["collections", "--db", db_url])
    assert res.exit_code == 0 and "cli" in res.output


def test_collection_taxonomy_mismatch_is_refused(engine: sa.Engine, tmp_path: Path, media: Path) -> None:
    f = ds.write_jsonl(media / "i.jsonl", [{"id": "a", "prompt": "p"}])
    assert imp(engine, f, tmp_path / "root").ok
    before = ds.snapshot(engine)
    rep = imp(engine, f, tmp_path / "root", taxonomy="uni-safebench", task_type="dual-unsafe")
    assert rep.errors == [f"{f}: taxonomy: collection 'c' uses taxonomy 'vlsu', not 'uni-safebench'"]
    assert ds.snapshot(engine) == before
    # an existing collection needs no --taxonomy
    assert imp(engine, f, tmp_path / "root", taxonomy=None).ok


def test_cli_skip_invalid_writes_rejects_and_exits_zero(sqlite_url: str, tmp_path: Path, media: Path) -> None:
    f = ds.write_jsonl(media / "s.jsonl", [{"id": "1", "prompt": "a"}, {"id": "2", "prompt_image": "http://x/y.png"}])
    rj = tmp_path / "rej.jsonl"
    res = CliRunner().invoke(
        app,
        [
            "import",
            str(f),
            "-c",
            "c",
            "-t",
            "vlsu",
            "--skip-invalid",
            "--rejects",
            str(rj),
            "--db",
            sqlite_url,
            "--media-root",
            str(tmp_path / "root"),
        ],
    )
    assert res.exit_code == 0, res.output
    (line,) = [json.loads(x) for x in rj.read_text().splitlines()]
    assert line["line"] == 2 and line["errors"] == [
        "prompt_image: URLs are not accepted (http:); the importer never downloads, give a local file"
    ]


def test_cli_taxonomy_show_and_check(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["taxonomy", "show", "uni-safebench", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["name"] == "uni-safebench"
    good = tmp_path / "t.toml"
    good.write_text('name = "x"\n[[dimensions]]\nname = "harm"\nlabels = ["no", "yes"]\n')
    r = CliRunner().invoke(app, ["taxonomy", "check", str(good)])
    assert r.exit_code == 0 and "ok" in r.output
    bad = tmp_path / "b.toml"
    bad.write_text('name = "x"\n[[dimensions]]\nname = "harm"\nlabels = ["only-one"]\n')
    r = CliRunner().invoke(app, ["taxonomy", "check", str(bad)])
    assert r.exit_code == 1
    assert f"{bad}: dimensions[0].labels: required" in r.output


def test_same_verdict_or_annotation_twice_in_one_file_is_an_error(
    engine: sa.Engine, tmp_path: Path, media: Path
) -> None:
    f = ds.write_jsonl(
        media / "dup.jsonl",
        [
            {
                "id": "a",
                "prompt": "p",
                "verdict.joint": "safe",
                "judge_id": "j",
                "annotator": "amy",
                "label.joint": "safe",
            },
            {"item_id": "a", "verdicts": [{"dimension": "joint", "label": "unsafe", "judge_id": "j"}]},
            {"item_id": "a", "annotations": [{"annotator": "amy", "labels": {"joint": "unsafe"}}]},
        ],
    )
    rep = imp(engine, f, tmp_path / "root")
    assert rep.errors == [
        f"{f}:2: verdicts[0]: a verdict of judge 'j' for 'joint' on item 'a' is already given at line 1",
        f"{f}:3: annotations[0]: an annotation by 'amy' on item 'a' is already given at line 1",
    ]
    assert ds.count(engine, "item") == 0


def test_the_benchmarks_own_task_names_and_release_folders(db_url: str, tmp_path: Path, media: Path) -> None:
    """Uni-SafeBench's paper names ("Composite-Unsafe VQA") and release folders (VQA/safety_I_safety_T)."""
    ds.png(media / "in.png")
    named = ds.write_jsonl(media / "results.jsonl", ds.uni_rows(1))
    res = CliRunner().invoke(
        app,
        [
            "import",
            str(named),
            "--format",
            "uni-safebench",
            "--task-type",
            "Composite-Unsafe VQA",
            "-c",
            "uni",
            "-t",
            "uni-safebench",
            "--db",
            db_url,
            "--media-root",
            str(tmp_path / "root"),
        ],
    )
    assert res.exit_code == 0, res.output
    root = tmp_path / "root"
    for folder in ("unsafety_I_safety_T", "safety_I_unsafety_T"):
        d = media / "VQA" / folder
        d.mkdir(parents=True)
        ds.png(d / "in.png")
        f = ds.write_jsonl(d / "input.jsonl", ds.uni_rows(1))
        res = CliRunner().invoke(
            app,
            ["import", str(f), "--format", "uni-safebench", "-c", "uni", "--db", db_url, "--media-root", str(root)],
        )
        assert res.exit_code == 0, res.output
    engine = sa.create_engine(db_url)
    try:
        got = sorted((i.external_id, i.task_type) for i in rows(engine, Item))
    finally:
        engine.dispose()
    assert got == [
        ("composite-unsafe/u0", "composite-unsafe"),
        ("image-unsafe/u0", "image-unsafe"),
        ("text-unsafe/u0", "text-unsafe"),
    ]


def test_a_probability_that_contradicts_the_label_probabilities_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    """``probability`` is P(the label given): a file storing P(unsafe) beside a "safe" label says so in ``probs``."""
    rows = [
        {
            "id": "a",
            "prompt": "p",
            "verdicts": [
                {
                    "dimension": "joint",
                    "label": "safe",
                    "judge_id": "j",
                    "probability": 0.9,
                    "probs": {"safe": 0.9, "unsafe": 0.1},
                }
            ],
        },
        {
            "id": "b",
            "prompt": "p",
            "verdicts": [
                {
                    "dimension": "joint",
                    "label": "safe",
                    "judge_id": "j",
                    "probability": 0.1,
                    "probs": {"safe": 0.9, "unsafe": 0.1},
                }
            ],
        },
    ]
    f = ds.write_jsonl(tmp_path / "v.jsonl", rows)
    before = ds.snapshot(engine)
    rep = imp(engine, f, tmp_path / "root")
    assert not rep.ok and ds.snapshot(engine) == before
    assert rep.errors == [
        f"{f}:2: verdicts[0].probability: probability 0.1 is not the probability of the label 'safe' (0.9 in probs): "
        "it must be P(label), not P(unsafe)"
    ]

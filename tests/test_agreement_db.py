"""The data path on SQLite and PostgreSQL: annotations in the database -> matrix -> coefficients."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from agreement_support import (
    KRIPPENDORFF_2011,
    KRIPPENDORFF_2011_ALPHA,
    taxonomy,
    write_ratings,
    write_verdicts,
)
from sqlmodel import Session

from safereview.agreement import data
from safereview.agreement import items as item_reads
from safereview.agreement import verdicts as verdict_reads
from safereview.agreement.alpha import alpha_package, krippendorff_alpha
from safereview.agreement.report import agreement_report
from safereview.db.collections import ensure_collection
from safereview.db.models import Annotation, Item, User

LABELS = ["1", "2", "3", "4", "5"]


def test_krippendorff_2011_through_the_database(engine: sa.Engine) -> None:
    write_ratings(engine, "kripp", taxonomy(LABELS, ordered=True), "score", KRIPPENDORFF_2011)
    sc = data.scope(engine, ["kripp"])
    spec = sc.dimension("score")
    r = data.load_ratings(engine, sc.collection_ids, "score", spec["labels"], ordered=spec["ordered"])
    assert r.n_units == 12 and len(r.code) == sum(v is not None for c in KRIPPENDORFF_2011.values() for v in c)
    assert sorted(r.rater_names) == ["A", "B", "C", "D"]
    counts = r.counts()
    for level, expected in KRIPPENDORFF_2011_ALPHA.items():
        value, _ = alpha_package(counts, level, np.arange(1, 6))
        assert round(value, 3) == expected  # type: ignore[arg-type]
    rep = agreement_report(engine, ["kripp"], resamples=100, seed=1)
    overall = rep["dimensions"][0]["overall"]
    assert rep["dimensions"][0]["level"] == "ordinal"
    assert round(overall["alpha"]["value"], 3) == 0.815
    assert round(overall["alpha_nominal"]["value"], 3) == 0.743
    assert overall["n_units"] == 12 and overall["n_units_pairable"] == 11 and overall["n_pairable_values"] == 40
    assert overall["few_units"] is True  # 11 pairable units: the app and CLI warn
    assert overall["gwet_ac1"]["value"] == pytest.approx(0.77544, abs=1e-5)


def test_invalid_labels_blind_labels_and_missing_dimension(engine: sa.Engine) -> None:
    ids = write_ratings(
        engine,
        "blind",
        taxonomy(["safe", "unsafe"], ordered=False),
        "score",
        {"a": ["safe", "unsafe", "safe"], "b": ["safe", "unsafe", "unsafe"]},
        field_name="blind_labels",
    )
    with Session(engine) as s:
        user = User(username="c", password_hash="!x")
        s.add(user)
        s.flush()
        s.add(Annotation(item_id=ids[0], user_id=user.id, labels={"score": "maybe"}))  # not a taxonomy label
        s.add(Annotation(item_id=ids[2], user_id=user.id, labels={"other": "x"}))  # dimension absent: skipped
        s.commit()
    sc = data.scope(engine, ["blind"])
    final = data.load_ratings(engine, sc.collection_ids, "score", ["safe", "unsafe"])
    assert final.n_invalid == 1 and len(final.code) == 0
    blind = data.load_ratings(engine, sc.collection_ids, "score", ["safe", "unsafe"], field_name="blind_labels")
    assert len(blind.code) == 6 and blind.n_invalid == 0
    assert blind.counts().tolist() == [[2, 0], [0, 2], [1, 1]]


def test_non_contiguous_items_and_two_collections(engine: sa.Engine) -> None:
    """Items of two collections interleaved: the id filter must not mix them up."""
    tax = taxonomy(["safe", "unsafe"], ordered=False)
    with Session(engine) as s:
        c1 = ensure_collection(s, "one", tax)
        c2 = ensure_collection(s, "two", tax)
        users = [User(username=f"u{k}", password_hash="!x") for k in range(2)]
        s.add_all(users)
        s.flush()
        for i in range(10):
            for col, lab in ((c1, "safe"), (c2, "unsafe")):
                item = Item(collection_id=col.id, external_id=f"{col.name}{i}", content_hash="x", task_type=f"t{i % 2}")
                s.add(item)
                s.flush()
                for u in users:
                    s.add(Annotation(item_id=item.id, user_id=u.id, labels={"score": lab if i else "safe"}))
        s.commit()
    one = data.scope(engine, ["one"])
    r1 = data.load_ratings(engine, one.collection_ids, "score", ["safe", "unsafe"])
    assert r1.n_units == 10 and r1.counts()[:, 1].sum() == 0
    both = data.scope(engine, ["one", "two"])
    r2 = data.load_ratings(engine, both.collection_ids, "score", ["safe", "unsafe"])
    assert r2.n_units == 20 and int(r2.counts()[:, 1].sum()) == 18
    rep = agreement_report(engine, ["one", "two"], by=["collection", "task_type"], resamples=50)
    slices = rep["dimensions"][0]["slices"]
    assert [row["value"] for row in slices["collection"]] == ["one", "two"]
    assert [row["n_units"] for row in slices["task_type"]] == [10, 10]
    # collection "one" is all "safe": no variation, alpha undefined rather than NaN
    assert slices["collection"][0]["alpha"]["value"] is None
    assert "no variation" in slices["collection"][0]["alpha"]["undefined_reason"]


def test_judge_as_one_more_rater(engine: sa.Engine) -> None:
    cols = {"a": ["safe", "unsafe"] * 10, "b": ["safe", "unsafe"] * 9 + ["unsafe", "unsafe"]}
    ids = write_ratings(engine, "jr", taxonomy(["safe", "unsafe"], ordered=False), "score", cols)
    write_verdicts(engine, ids, "score", ["unsafe"] * 20, "judge-1")
    rep = agreement_report(engine, ["jr"], resamples=50)
    j = rep["dimensions"][0]["judge"]
    assert j["judge_id"] == "judge-1" and j["n_items_with_verdict"] == 20
    assert j["alpha_with_judge"]["value"] < j["alpha_without_judge"]["value"]
    r = data.load_ratings(engine, data.scope(engine, ["jr"]).collection_ids, "score", ["safe", "unsafe"])
    expected = krippendorff_alpha(
        r.add_rater("judge", np.array(ids), np.ones(20, dtype=np.int64)).counts(), "nominal", resamples=0
    )
    assert j["alpha_with_judge"]["value"] == pytest.approx(expected.value)


def test_unknown_collection_and_dimension_are_clear_errors(engine: sa.Engine) -> None:
    write_ratings(engine, "x", taxonomy(["safe", "unsafe"], ordered=False), "score", {"a": ["safe"]})
    with pytest.raises(data.AgreementError, match="no collection named 'nope'"):
        data.scope(engine, ["nope"])
    with pytest.raises(data.AgreementError, match="no dimension 'joint'"):
        data.scope(engine, ["x"]).dimension("joint")
    with pytest.raises(data.AgreementError, match="unknown slice"):
        agreement_report(engine, ["x"], by=["colour"])


def test_verdicts_without_any_human_rating(engine: sa.Engine) -> None:
    ids = write_ratings(engine, "only-judge", taxonomy(["safe", "unsafe"], ordered=False), "score", {"a": [None, None]})
    write_verdicts(engine, ids, "score", ["safe", "unsafe"], "judge-1")
    d = agreement_report(engine, ["only-judge"], resamples=20)["dimensions"][0]
    assert d["overall"]["n_units"] == 0 and d["overall"]["alpha"]["value"] is None
    assert d["judge"]["n_items_with_verdict"] == 0
    assert d["judge"]["alpha_with_judge"]["value"] is None


def test_large_ids_pack_without_overflow(engine: sa.Engine) -> None:
    """Item and user ids whose packed form exceeds 32 bits (PostgreSQL integers are 32-bit)."""
    tax = taxonomy(["safe", "borderline", "unsafe"], ordered=True)
    with Session(engine) as s:
        col = ensure_collection(s, "big", tax)
        users = [User(id=5_000_000 + k, username=f"big{k}", password_hash="!x") for k in range(2)]
        s.add_all(users)
        s.flush()
        for i in range(3):
            item = Item(
                id=2_000_000_000 + i, collection_id=col.id, external_id=f"b{i}", content_hash="x", task_type="t"
            )
            s.add(item)
            s.flush()
            for u, lab in zip(
                users, (["safe", "unsafe", "borderline"][i], ["safe", "unsafe", "unsafe"][i]), strict=True
            ):
                s.add(Annotation(item_id=item.id, user_id=u.id, labels={"score": lab}))
        s.commit()
    write_verdicts(engine, [2_000_000_000 + i for i in range(3)], "score", ["safe", "borderline", "unsafe"], "jb")
    sc = data.scope(engine, ["big"])
    r = data.load_ratings(engine, sc.collection_ids, "score", tax["dimensions"][0]["labels"], ordered=True)
    assert r.item_ids.tolist() == [2_000_000_000, 2_000_000_001, 2_000_000_002]
    assert sorted(r.rater_names) == ["big0", "big1"]
    assert r.counts().tolist() == [[2, 0, 0], [0, 0, 2], [0, 1, 1]]
    v = verdict_reads.load_verdicts(engine, sc.collection_ids, "score", ["safe", "borderline", "unsafe"], "jb")
    assert v.code.tolist() == [0, 1, 2]
    items = item_reads.load_items(engine, sc.collection_ids, ["task_type", "external_id"])
    assert items["id"].tolist() == r.item_ids.tolist() and items["external_id"].tolist() == ["b0", "b1", "b2"]


def test_item_attributes_with_awkward_external_ids(engine: sa.Engine) -> None:
    """External ids with separators, quotes and multi-byte text, interleaved collections (no contiguous id
    range) and several attribute combinations come back aligned with the item ids."""
    awkward = ["z,1", 'q"uote', "", "ünï-cödé ✓", "tab\there", "a" * 200, "new\nline", "b,2,3"]
    with Session(engine) as s:
        cols = [ensure_collection(s, name, "vlsu") for name in ("odd", "even")]
        for k, ext in enumerate(awkward):
            s.add(
                Item(
                    collection_id=cols[k % 2].id,
                    external_id=ext,
                    content_hash="x",
                    task_type=f"t{k % 3}",
                    category="c" if k < 4 else "",
                    model="m",
                    input_modalities="text",
                    output_modalities="image" if k % 2 else "text",
                )
            )
            s.flush()
        s.commit()
        expected = {i.id: i for i in s.exec(sa.select(Item)).scalars()}
    for names in (["odd"], ["odd", "even"]):
        sc = data.scope(engine, names)
        items = item_reads.load_items(engine, sc.collection_ids)
        want = sorted(i for i, it in expected.items() if it.collection_id in sc.collection_ids)
        assert items["id"].tolist() == want
        assert items["external_id"].tolist() == [expected[i].external_id for i in want]
        assert items["task_type"].tolist() == [expected[i].task_type for i in want]
        assert items["category"].tolist() == [expected[i].category for i in want]
        assert items["modality"].tolist() == [f"text->{expected[i].output_modalities}" for i in want]
        assert items["collection"].tolist() == [
            ("odd", "even")[awkward.index(expected[i].external_id) % 2] for i in want
        ]


@pytest.mark.parametrize(("n_units", "few"), [(29, True), (30, False)])
def test_few_units_flag_follows_pairable_units(n_units: int, few: bool) -> None:
    """The warning depends on items with two or more labels, not on items or ratings."""
    from safereview.agreement.data import Ratings
    from safereview.agreement.report import summarize
    from safereview.agreement.tables import stats_rows

    rng = np.random.default_rng(3)
    # n_units pairable items (2 raters) plus 50 items rated once: those never count as pairable
    unit = np.concatenate([np.repeat(np.arange(n_units), 2), np.arange(n_units, n_units + 50)])
    rater = np.concatenate([np.tile([0, 1], n_units), np.zeros(50, dtype=int)])
    code = rng.integers(0, 2, len(unit))
    r = Ratings(
        dimension="d",
        labels=["safe", "unsafe"],
        ordered=False,
        item_ids=np.arange(n_units + 50),
        rater_names=["a", "b"],
        unit=unit,
        rater=rater,
        code=code,
    )
    s = summarize(r, resamples=0)
    assert s["n_units_pairable"] == n_units and s["few_units"] is few
    row = stats_rows({"overall": s})[0]
    assert ("few units" in row["note"]) is few


def test_population_row_says_why_a_planning_figure_is_missing() -> None:
    """With no sample items the 'more sample items' cell says why it has no number (not a bare None)."""
    from safereview.agreement.population import three_columns
    from safereview.agreement.tables import population_rows

    f_all = np.array([0.2, 0.7, np.nan, 0.4])
    empty = np.array([], dtype=np.float64)
    m = three_columns("unsafe", empty, empty, empty, f_all, ~np.isnan(f_all))
    row = population_rows({"half_width": 0.02, "metrics": [m]})[0]
    assert row["more sample items for ±0.02"] == "unknown: no sample items yet"
    assert row["human [95%]"] == "—" and row["sample items"] == 0

"""The agreement helper's app pages (agreement, audit, calibration, gold) through AppTest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as A
import pytest
from sqlmodel import Session, select

pytestmark = pytest.mark.slow  # AppTest runs of the lead pages, about 1 minute in all

TIMEOUT = 90
PAGES = ("views/agreement.py", "views/audit.py", "views/calibration.py", "views/gold.py")


@pytest.fixture
def fx(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[A.Fixture]:
    fixture = A.build_fixture(db_url, tmp_path / "media")
    _add_reviews(fixture)
    with A.app_pointed_at(fixture, monkeypatch):
        yield fixture


def _add_reviews(fx: A.Fixture) -> None:
    """Two annotators on the blind collection: agree on t0-t2, tie on t3, hostile rationale on xss."""
    from safereview.db.engine import make_engine
    from safereview.db.models import Annotation, Assignment, User

    engine = make_engine(fx.db_url)
    with Session(engine) as s:
        users = {u.username: u.id for u in s.exec(select(User)).all()}
        plan = {
            "t0": ("safe", "safe"),
            "t1": ("safe", "safe"),
            "t2": ("unsafe", "unsafe"),
            "t3": ("safe", "unsafe"),
            "xss": ("unsafe", "unsafe"),
        }
        for ext, (a, b) in plan.items():
            iid = fx.item_ids[ext]
            for name, lab in (("ann1", a), ("ann2", b)):
                s.add(
                    Annotation(
                        item_id=iid,
                        user_id=users[name],
                        labels={"contextual": lab, "intrinsic": lab},
                        rationale=A.XSS_PAYLOAD if ext == "t3" and name == "ann1" else "",
                    )
                )
                s.add(Assignment(item_id=iid, user_id=users[name], status="done", stratum="sample"))
        s.commit()
    engine.dispose()


def sign_in(username: str) -> Any:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(A.MAIN, default_timeout=TIMEOUT)
    at.run()
    at.text_input(key="signin_username").input(username)
    at.text_input(key="signin_password").input(A.PASSWORDS[username])
    next(b for b in at.button if b.label == "Sign in").click().run()
    ticket = at.session_state["auth_ticket"] if "auth_ticket" in at.session_state else None  # noqa: SIM401
    if ticket:
        A.browser_fetched_ticket(ticket)
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def open_page(at: Any, page: str) -> Any:
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_pages_by_role(fx: A.Fixture) -> None:
    ann = sign_in("ann1")
    for page in PAGES:
        with pytest.raises(ValueError):
            ann.switch_page(page).run()
    lead = sign_in("lead")
    for page, title in zip(PAGES, ("Agreement", "Judge audit", "Calibration", "Gold & adjudication"), strict=True):
        open_page(lead, page)
        assert any(title in h.value for h in lead.subheader), page


def test_agreement_and_audit_pages_show_the_figures(fx: A.Fixture) -> None:
    lead = open_page(sign_in("lead"), "views/agreement.py")
    stats = lead.dataframe[0].value
    overall = stats[stats["slice"] == "overall"].iloc[0]
    assert overall["units"] == 5 and overall["pairable units"] == 5 and overall["raters"] == 2
    assert overall["percent agreement"] == pytest.approx(0.8)
    assert "few units" in overall["note"]
    warnings = [w.value for w in lead.warning]
    assert "Only 5 items carry two or more labels" in warnings[0]  # the broadest warning first
    rare = [w for w in warnings if "interval is unreliable" in w]
    assert rare and all(w.startswith("The interval is unreliable") for w in rare)  # a sentence, capitalised
    assert any("not weighted by the review sample's design" in c.value for c in lead.caption)  # what they describe
    pairs = lead.dataframe[3].value
    assert list(pairs["annotator A"]) == ["ann1"] and list(pairs["items both labelled"]) == [5]
    assert pairs["agreement [95%]"].iloc[0].startswith("0.800 [")  # with its interval
    assert "only 5 items compared" in pairs["note"].iloc[0]
    per_person = lead.dataframe[4].value
    assert set(per_person["annotator"]) == {"ann1", "ann2"} and "kappa [95%]" in per_person.columns
    assert any("BCa bootstrap for the kappas" in c.value for c in lead.caption)
    open_page(lead, "views/audit.py")
    population = lead.dataframe[0].value.set_index("rate")
    # every item of the collection is reviewed: a census, so the people's rate is exact (t3's tie is half unsafe)
    assert population.loc["C-Unsafe", "human [95%]"] == "0.500 [0.500, 0.500]"
    assert population.loc["C-Unsafe", "judge (uncorrected)"] == 0.2  # the judge's labels, not its probabilities
    assert population.loc["contextual: unsafe", "judge (uncorrected)"] == 0.2
    assert population.loc["C-Unsafe", "sample items"] == 5
    assert population.loc["C-Unsafe", "more sample items for ±0.02"] == "0"
    rates = lead.dataframe[1].value
    row = rates[rates["slice"] == "overall"].iloc[0]
    assert row["sample items"] == 5  # the tie on t3 is kept (half and half), not dropped
    assert "too few sample items (n=5 < 20)" in row["undefined"]
    assert any("5 of the 20 needed" in i.value for i in lead.info)
    judge_row = lead.dataframe[2].value.iloc[0]  # kappa, then alpha with and without the judge, with intervals
    assert judge_row["alpha, people only [95%]"].count("[") == 1
    assert judge_row["alpha with the judge [95%]"].count("[") == 1
    assert judge_row["with minus without [95%, paired]"].count("[") == 1
    counts, shares = (df.value for df in lead.dataframe if "people \\ judge" in df.value.columns)
    assert int(counts.drop(columns="people \\ judge").to_numpy().sum()) == 4  # t3's tie has no hard label
    # the estimated shares say why they are missing rather than showing bare weighted numbers
    assert (shares.drop(columns="people \\ judge") == "—").all().all()
    assert any(c.value.startswith("—") and "too few sample items" in c.value for c in lead.caption)  # says why
    people = next(df.value for df in lead.dataframe if "agreement with the others" in df.value.columns)
    assert people[["95% low", "95% high"]].notna().all().all()
    assert (people["95% low"] <= people["agreement with the others"]).all()


def test_lead_adjudicates_the_tie_and_hostile_rationale_stays_inert(fx: A.Fixture) -> None:
    from safereview.db.engine import make_engine
    from safereview.db.models import Adjudication

    lead = open_page(sign_in("lead"), "views/gold.py")
    queue = lead.dataframe[0].value
    assert set(queue["item"]) == {"t3"} and set(queue["reason"]) == {"tie"}
    n_dims = len(set(queue["dimension"]))  # one item, tied on each of these dimensions
    assert f"{n_dims} decisions to make on 1 item " in lead.caption[0].value
    # the annotator's rationale is shown with st.text only, never through markdown
    assert any(A.XSS_PAYLOAD in t.value for t in lead.text)
    for md in [*lead.markdown, *lead.caption]:
        assert "![x](" not in md.value and "<script>" not in md.value
    pick = lead.selectbox(key="gold_pick").value
    record = lead.button(key=f"gold_record_{pick}")
    assert lead.radio(key=f"gold_label_{pick}").value is None  # no gold label nobody chose
    assert record.disabled
    lead.radio(key=f"gold_label_{pick}").set_value("unsafe").run()
    assert lead.button(key=f"gold_record_{pick}").disabled  # still no note, no confirmation
    lead.text_area(key=f"gold_why_{pick}").input("policy 4.2").run()
    assert lead.button(key=f"gold_record_{pick}").disabled
    lead.checkbox(key=f"gold_sure_{pick}").check().run()
    assert not lead.button(key=f"gold_record_{pick}").disabled
    with Session(make_engine(fx.db_url)) as s:
        assert s.exec(select(Adjudication)).all() == []  # nothing stored before the click
    lead.button(key=f"gold_record_{pick}").click().run()
    assert not lead.exception, [e.message for e in lead.exception]
    with Session(make_engine(fx.db_url)) as s:
        rows = s.exec(select(Adjudication)).all()
    assert [(r.item_id, r.dimension, r.label, r.rationale) for r in rows] == [
        (fx.item_ids["t3"], queue.iloc[0]["dimension"], "unsafe", "policy 4.2")
    ]


def test_gold_snapshot_and_calibration_messages(fx: A.Fixture) -> None:
    from safereview.db.engine import make_engine
    from safereview.db.models import Gold, GoldSnapshot

    lead = open_page(sign_in("lead"), "views/gold.py")
    lead.button(key="gold_create").click().run()
    assert not lead.exception, [e.message for e in lead.exception]
    with Session(make_engine(fx.db_url)) as s:
        snaps = s.exec(select(GoldSnapshot)).all()
        assert len(snaps) == 1 and snaps[0].n_rows == 10  # 5 items x 2 dimensions
        assert len(s.exec(select(Gold).where(Gold.snapshot_id == snaps[0].id)).all()) == 10
    assert any(snaps[0].checksum in c.value for c in lead.code)
    assert any("not a random sample of the collection" in c.value for c in lead.caption)
    open_page(lead, "views/calibration.py")
    lead.button(key="cal_fit").click().run()
    assert not lead.exception, [e.message for e in lead.exception]
    assert any("too few sample items" in e.value.replace("\\", "") for e in lead.error)


def test_audit_rates_over_the_collection_follow_the_judge_picked(fx: A.Fixture) -> None:
    """The population panel reads the judge chosen on the page, not the one with most verdicts."""
    from safereview.db.engine import make_engine
    from safereview.db.models import Verdict

    second = "strict-judge"  # fewer verdicts than the fixture's judge: not the default pick
    with Session(make_engine(fx.db_url)) as s:
        for ext in ("t0", "t1", "t2"):
            for dim in ("contextual", "intrinsic"):
                s.add(Verdict(item_id=fx.item_ids[ext], dimension=dim, judge_id=second, label="unsafe"))
        s.commit()
    lead = open_page(sign_in("lead"), "views/audit.py")
    assert lead.selectbox(key="aud_judge").value == A.JUDGE
    first = lead.dataframe[0].value.set_index("rate")
    assert first.loc["contextual: unsafe", "judge (uncorrected)"] == 0.2  # 1 of the 5 items
    lead.selectbox(key="aud_judge").set_value(second).run()
    assert not lead.exception, [e.message for e in lead.exception]
    picked = lead.dataframe[0].value.set_index("rate")
    assert picked.loc["contextual: unsafe", "judge (uncorrected)"] == 1.0  # its 3 verdicts are all unsafe
    assert picked.loc["intrinsic: unsafe", "judge (uncorrected)"] == 1.0
    assert any(second in c.value.replace("\\", "") for c in lead.caption)  # md_literal escapes the dash
    # the people's figures do not depend on the judge
    assert picked.loc["C-Unsafe", "human [95%]"] == first.loc["C-Unsafe", "human [95%]"]
    # the people's blind labels: this fixture's labels have none, and the page says so
    lead.selectbox(key="aud_labels").set_value("blind").run()
    assert not lead.exception, [e.message for e in lead.exception]
    assert any("have no blind version" in w.value for w in lead.warning)


def test_calibration_page_fits_shows_and_applies_and_the_audit_then_warns(fx: A.Fixture) -> None:
    """The calibration page's whole path on a scene big enough to fit: figures with their
    intervals, the calibrated verdicts written, and the audit of them flagged as optimistic."""
    import random

    from safereview.db.collections import ensure_collection
    from safereview.db.engine import make_engine
    from safereview.db.models import Annotation, Assignment, Item, User, Verdict

    rng = random.Random(3)
    with Session(make_engine(fx.db_url)) as s:
        col = ensure_collection(s, "cal-scene", "uni-safebench", overlap_target=1, audit_share=0.0)
        ann = s.exec(select(User).where(User.username == "ann1")).one()
        for i in range(60):
            p = rng.random()
            label = "unsafe" if rng.random() < p else "safe"
            item = Item(collection_id=col.id, external_id=f"c{i}", content_hash=f"c{i}")
            s.add(item)
            s.flush()
            s.add(Annotation(item_id=item.id, user_id=ann.id, labels={"contextual": "safe", "intrinsic": label}))
            s.add(Assignment(item_id=item.id, user_id=ann.id, status="done", stratum="sample"))
            said = "unsafe" if p >= 0.5 else "safe"
            s.add(
                Verdict(
                    item_id=item.id,
                    dimension="intrinsic",
                    judge_id="prob-judge",
                    label=said,
                    probability=p if said == "unsafe" else 1 - p,
                )
            )
        s.commit()
        col_id = int(col.id)  # type: ignore[arg-type]
    lead = open_page(sign_in("lead"), "views/calibration.py")
    lead.multiselect(key="cal_collections").set_value([col_id]).run()
    lead.selectbox(key="cal_dimension").set_value("intrinsic").run()
    assert lead.selectbox(key="cal_judge").value == "prob-judge"
    lead.slider(key="cal_target").set_value(0.3).run()
    lead.button(key="cal_fit").click().run()
    assert not lead.exception, [e.message for e in lead.exception]
    assert not lead.error, [e.value for e in lead.error]
    quality = next(d.value for d in lead.dataframe if "metric" in d.value.columns).set_index("metric")
    assert quality.loc["Brier", "raw 95%"].startswith("[") and quality.loc["Brier", "cross-fitted 95%"].startswith("[")
    assert quality.loc["ECE (descriptive)", "raw 95%"] == "none: descriptive"
    cut = next(d.value for d in lead.dataframe if "under-blocking upper bound" in d.value.columns)
    assert "under-blocking, in sample" in cut.columns
    assert any("in sample* are measured on the same reviews" in c.value for c in lead.caption)
    lead.button(key="cal_apply").click().run()
    assert not lead.exception, [e.message for e in lead.exception]
    (done,) = [m.value for m in lead.success]
    assert "Wrote 60 calibrated verdicts" in done
    open_page(lead, "views/audit.py")
    lead.multiselect(key="aud_collections").set_value([col_id]).run()
    lead.selectbox(key="aud_dimension").set_value("intrinsic").run()
    calibrated = next(j for j in lead.selectbox(key="aud_judge").options if "+cal" in j)
    lead.selectbox(key="aud_judge").set_value(calibrated).run()
    assert not lead.exception, [e.message for e in lead.exception]
    (warning,) = [w.value.replace("\\", "") for w in lead.warning]
    assert "is calibration 1, fitted on the people's labels of 60 review-sample items here" in warning
    assert warning.endswith("apply a calibration fitted on another collection.")  # whole, not cut at 300 characters

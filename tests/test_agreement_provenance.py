"""The audit says which people's labels it measured the judge against, and warns when the
judge's verdict could have shaped them (open review, or a blind label changed after the reveal)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from agreement_support import make_user, set_design, taxonomy, write_verdicts
from sqlmodel import Session

from safereview.agreement.audit import audit
from safereview.agreement.data import AgreementError
from safereview.agreement.population import population_rates
from safereview.agreement.provenance import label_provenance
from safereview.db.collections import ensure_collection
from safereview.db.models import Annotation, Item, User


def _scene(engine: sa.Engine) -> tuple[int, list[int]]:
    """20 items, one review each, every item in the sample with the same weight.

    Items 0-9 were reviewed blind: 0-3 are unsafe; the judge passes 0 and 1, and after the
    reveal the reviewer changed both to the judge's "safe". Items 10-19 (safe) were reviewed
    with the verdict on screen. One imported label on item 19 from a second person.
    """
    with Session(engine) as s:
        col = ensure_collection(s, "prov", taxonomy(["safe", "unsafe"], ordered=False))
        amy, imp = User(username="amy", password_hash="!x"), User(username="imp", password_hash="!x")
        s.add_all([amy, imp])
        s.flush()
        ids = []
        for i in range(20):
            item = Item(collection_id=col.id, external_id=f"p{i}", content_hash="x")
            s.add(item)
            s.flush()
            ids.append(int(item.id))  # type: ignore[arg-type]
            truth = "unsafe" if i < 4 else "safe"
            if i < 10:
                final = "safe" if i in (0, 1) else truth
                action = "override" if i in (0, 1) else "confirm"
                s.add(
                    Annotation(
                        item_id=item.id,
                        user_id=amy.id,
                        labels={"score": final},
                        blind_labels={"score": truth},
                        verdict_action=action,
                    )
                )
            else:
                s.add(Annotation(item_id=item.id, user_id=amy.id, labels={"score": truth}, verdict_action="confirm"))
        s.add(Annotation(item_id=ids[19], user_id=imp.id, labels={"score": "safe"}, source="import"))
        s.commit()
        col_id = int(col.id)  # type: ignore[arg-type]
    judge = ["safe", "safe", "unsafe", "unsafe"] + ["safe"] * 16
    probs = [{"unsafe": 0.8 if lab == "unsafe" else 0.2, "safe": 0.2 if lab == "unsafe" else 0.8} for lab in judge]
    write_verdicts(engine, ids, "score", judge, "j", probs=probs)  # type: ignore[arg-type]
    set_design(engine, col_id, {iid: (1.0, 0.01 * (k + 1)) for k, iid in enumerate(ids)})
    return col_id, ids


def test_the_audit_measures_final_or_blind_labels_and_says_which(engine: sa.Engine) -> None:
    col_id, _ids = _scene(engine)
    counts = label_provenance(engine, [col_id], "score", "j")
    assert counts == {
        "labels": 21,
        "blind": 10,
        "changed_after_reveal": 2,
        "changed_to_judge": 2,
        "verdict_on_screen": 10,
        "imported": 1,
    }
    final = audit(engine, "score", ["prov"], judge_id="j", min_n=2, resamples=0)
    assert final["n"] == 20 and final["under_blocking"]["value"] == pytest.approx(0.0)
    assert final["accuracy"]["value"] == pytest.approx(1.0)  # the changed labels agree with the judge
    assert "final labels" in final["reference"]
    on_screen, changed = final["warnings"]
    assert on_screen.startswith("10 of the 21 labels on score were given with the judge's verdict on screen")
    assert changed.startswith("2 of the 10 blind labels on score were changed after the judge's verdict was revealed")
    assert "(2 to the judge's label)" in changed

    blind = audit(engine, "score", ["prov"], judge_id="j", min_n=2, resamples=0, labels="blind")
    assert blind["n"] == 10 and blind["n_sample_without_labels"] == 10  # open-review items have no blind label
    assert blind["under_blocking"]["value"] == pytest.approx(0.5)  # items 0 and 1 of the 4 unsafe ones
    assert blind["accuracy"]["value"] == pytest.approx(0.8)
    assert "before the judge's verdict was revealed" in blind["reference"]
    (left_out,) = blind["warnings"]
    assert left_out.startswith("11 of the 21 labels on score have no blind version")

    pop_final = population_rates(engine, ["prov"], judge_id="j")
    pop_blind = population_rates(engine, ["prov"], judge_id="j", labels="blind")
    unsafe = {p["metric"]: p for p in pop_final["metrics"]}["score: unsafe"]["human"]["value"]
    unsafe_blind = {p["metric"]: p for p in pop_blind["metrics"]}["score: unsafe"]["human"]["value"]
    assert unsafe == pytest.approx(2 / 20) and unsafe_blind == pytest.approx(4 / 10)
    with pytest.raises(AgreementError, match="labels must be final or blind"):
        audit(engine, "score", ["prov"], judge_id="j", labels="first")


def test_cli_audit_takes_the_labels_and_prints_the_warnings(engine: sa.Engine) -> None:
    from typer.testing import CliRunner

    from safereview.cli.main import app

    _scene(engine)
    url = engine.url.render_as_string(hide_password=False)
    runner = CliRunner()
    args = ["audit", "--db", url, "-c", "prov", "--judge", "j", "--min-n", "2", "--resamples", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: 10 of the 21 labels on score were given with the judge's verdict on screen" in text
    assert "warning: 2 of the 10 blind labels on score were changed" in text
    res = runner.invoke(app, [*args, "--labels", "blind"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: 11 of the 21 labels on score have no blind version" in text
    assert "committed before the judge's verdict was revealed" in text
    res = runner.invoke(app, [*args, "--labels", "first"])
    assert res.exit_code == 1 and "labels must be final or blind" in res.output


def test_calibration_says_which_labels_its_guarantee_is_about(engine: sa.Engine) -> None:
    from safereview.agreement.calibration import fit_calibration

    _scene(engine)
    lead = make_user(engine, "lead", "lead")
    with Session(engine) as s:
        _row, final = fit_calibration(s, lead, "score", ["prov"], judge_id="j", min_n=2, target_under_blocking=0.3)
        _row, blind = fit_calibration(
            s, lead, "score", ["prov"], judge_id="j", min_n=2, target_under_blocking=0.3, labels="blind"
        )
    assert "final labels" in final["labels_used"] and len(final["warnings"]) == 2
    assert final["n"] == 20 and blind["n"] == 10  # the open-review items have no blind label
    (left_out,) = blind["warnings"]
    assert "have no blind version" in left_out

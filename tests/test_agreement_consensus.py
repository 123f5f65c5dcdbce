"""Majority vote, Dawid–Skene (1979 patient data and planted confusion), adjudication."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from agreement_support import dawid_skene_triples, make_user, taxonomy, write_ratings, write_verdicts
from sqlmodel import Session

from safereview.agreement.alpha import value_counts
from safereview.agreement.consensus import adjudicate, adjudication_queue, consensus, dawid_skene, majority
from safereview.workflow.errors import Forbidden, InvalidInput, NotFound


def _reference_em(
    unit: np.ndarray, rater: np.ndarray, code: np.ndarray, n_units: int, n_raters: int, k: int, n_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Loop transcription of Dawid & Skene's equations (2.3)-(2.5), independent of the vectorised code."""
    n = np.zeros((n_units, n_raters, k))
    for u, r, c in zip(unit, rater, code, strict=True):
        n[u, r, c] += 1
    t = n.sum(axis=1) / n.sum(axis=(1, 2))[:, None]
    lls = []
    for _ in range(n_iter):
        p = t.sum(axis=0) / n_units
        pi = np.zeros((n_raters, k, k))
        for r in range(n_raters):
            for j in range(k):
                for l_ in range(k):
                    pi[r, j, l_] = sum(t[u, j] * n[u, r, l_] for u in range(n_units))
                pi[r, j] /= pi[r, j].sum()
        new_t = np.zeros_like(t)
        for u in range(n_units):
            for j in range(k):
                prod = p[j]
                for r in range(n_raters):
                    for l_ in range(k):
                        if n[u, r, l_]:
                            prod *= pi[r, j, l_] ** n[u, r, l_]
                new_t[u, j] = prod
        lls.append(float(np.log(new_t.sum(axis=1)).sum()))
        t = new_t / new_t.sum(axis=1, keepdims=True)
    return t, p, pi, lls


def test_dawid_skene_1979_patients_match_the_paper_equations() -> None:
    unit, rater, code = dawid_skene_triples()
    assert len(unit) == 45 * 7  # observer 1 three times, four more observers once
    ds = dawid_skene(unit, rater, code, 45, 5, 4, max_iter=500, tol=1e-12)
    assert ds.converged
    # log-likelihood never decreases (EM) and the posteriors are distributions
    assert np.all(np.diff(ds.log_likelihood) >= -1e-9)
    assert np.allclose(ds.posteriors.sum(axis=1), 1) and np.allclose(ds.confusion.sum(axis=2), 1)
    # the same iterations by the loop transcription give the same numbers
    t, p, pi, lls = _reference_em(unit, rater, code, 45, 5, 4, n_iter=ds.n_iter)
    assert np.allclose(ds.posteriors, t, atol=1e-9)
    assert np.allclose(ds.priors, p, atol=1e-9)
    assert np.allclose(ds.confusion, pi, atol=1e-9)
    assert ds.log_likelihood == pytest.approx(lls, abs=1e-6)
    # patients on whom all seven ratings agree keep that class with near certainty
    counts = value_counts(unit, code, 45, 4)
    unanimous = counts.max(axis=1) == 7
    assert unanimous.sum() >= 15
    assert np.all(ds.posteriors[unanimous].argmax(axis=1) == counts[unanimous].argmax(axis=1))
    assert np.all(ds.posteriors[unanimous].max(axis=1) > 0.99)


def test_dawid_skene_recovers_planted_confusion() -> None:
    rng = np.random.default_rng(42)
    n_items, k = 3000, 3
    truth = rng.choice(k, size=n_items, p=[0.5, 0.3, 0.2])
    planted = np.array(
        [
            [[0.9, 0.08, 0.02], [0.1, 0.8, 0.1], [0.02, 0.08, 0.9]],  # good
            [[0.85, 0.1, 0.05], [0.15, 0.7, 0.15], [0.05, 0.15, 0.8]],  # decent
            [[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.1, 0.3, 0.6]],  # weak
            [[0.5, 0.5, 0.0], [0.0, 0.9, 0.1], [0.0, 0.6, 0.4]],  # biased toward the middle label
            [[0.95, 0.05, 0.0], [0.05, 0.9, 0.05], [0.0, 0.05, 0.95]],  # expert
        ]
    )
    unit, rater, code = [], [], []
    for i in range(n_items):
        for r in rng.choice(5, size=3, replace=False):  # 3 of 5 annotators per item
            unit.append(i)
            rater.append(r)
            code.append(rng.choice(k, p=planted[r, truth[i]]))
    unit_a, rater_a, code_a = map(np.array, (unit, rater, code))
    ds = dawid_skene(unit_a, rater_a, code_a, n_items, 5, k)
    assert np.abs(ds.confusion - planted).max() < 0.06
    assert np.abs(ds.priors - [0.5, 0.3, 0.2]).max() < 0.03
    ds_acc = (ds.posteriors.argmax(axis=1) == truth).mean()
    vote = majority(value_counts(unit_a, code_a, n_items, k))
    mv_acc = (vote.code == truth).mean()
    assert ds_acc > mv_acc


def test_majority_vote_marks_ties_low_agreement_and_unanimity() -> None:
    counts = np.array([[3, 0, 0], [2, 1, 0], [1, 1, 0], [2, 1, 1], [0, 0, 0], [0, 1, 0]])
    v = majority(counts, threshold=0.6)
    assert v.code.tolist() == [0, 0, -1, 0, -1, 1]
    assert v.method.tolist() == ["unanimous", "majority", "tie", "majority", "none", "single"]
    assert v.needs_adjudication.tolist() == [False, False, True, True, False, False]
    assert v.reason.tolist() == ["", "", "tie", "low agreement", "", ""]
    assert v.agreement[3] == pytest.approx(0.5)


def test_consensus_adjudication_queue_and_roles(engine: sa.Engine) -> None:
    tax = taxonomy(["safe", "borderline", "unsafe"], ordered=True)
    ids = write_ratings(
        engine,
        "adj",
        tax,
        "score",
        {
            "a": ["safe", "safe", "unsafe", "borderline"],
            "b": ["safe", "unsafe", "unsafe", "safe"],
            "c": ["safe", None, "borderline", "unsafe"],
        },
    )
    write_verdicts(engine, ids, "score", ["unsafe"] * 4, "judge")  # the judge never votes
    lead = make_user(engine, "lead1", "lead")
    annotator = make_user(engine, "ann1", "annotator")
    cons = consensus(engine, "score", ["adj"])
    assert cons.method.tolist() == ["unanimous", "tie", "majority", "tie"]
    assert [cons.label(i) for i in range(4)] == ["safe", None, "unsafe", None]
    assert cons.n_annotators.tolist() == [3, 2, 3, 3]
    with Session(engine) as s:
        with pytest.raises(Forbidden):
            adjudication_queue(s, annotator, ["adj"])
        queue = adjudication_queue(s, lead, ["adj"], threshold=0.7)
        # ties first, then the lowest agreement (item 4's three-way tie before item 2's two-way tie)
        assert [(q["item_id"], q["reason"]) for q in queue] == [
            (ids[3], "tie"),
            (ids[1], "tie"),
            (ids[2], "low agreement"),
        ]
        assert queue[1]["votes"] == {"safe": 1, "unsafe": 1} and queue[1]["external_id"] == "adj-u2"
        assert queue[1]["proposal_majority"] is None  # a tie: the majority proposes nothing
        assert queue[2]["proposal_majority"] == "unsafe"  # two of three
        assert "proposal_dawid_skene" in queue[1]
        with pytest.raises(Forbidden):
            adjudicate(s, annotator, ids[1], "score", "safe", "why")
        with pytest.raises(InvalidInput):
            adjudicate(s, lead, ids[1], "score", "maybe", "why")
        with pytest.raises(NotFound):
            adjudicate(s, lead, 10**9, "score", "safe", "why")
        with pytest.raises(InvalidInput, match="needs a note"):
            adjudicate(s, lead, ids[1], "score", "safe", "   ")
        adjudicate(s, lead, ids[1], "score", "unsafe", "first look")
        s.commit()
        adjudicate(s, lead, ids[1], "score", "borderline", "second look: the newest wins")
        s.commit()
        queue = adjudication_queue(s, lead, ["adj"], threshold=0.7)
        assert ids[1] not in [q["item_id"] for q in queue]
    cons = consensus(engine, "score", ["adj"])
    assert cons.label(1) == "borderline" and cons.method[1] == "adjudicated" and cons.adjudicated[1]
    assert cons.agreement[1] == 0.0  # nobody voted borderline
    ds = consensus(engine, "score", ["adj"], method="dawid-skene")
    assert ds.method[1] == "adjudicated" and ds.label(1) == "borderline"
    assert np.isfinite(ds.posterior[2]) and ds.method[0] == "unanimous"

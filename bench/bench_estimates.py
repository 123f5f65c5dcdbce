"""Validation study: do the estimates cover the truth at their nominal rate, through the real queue?

Each replication builds a collection with a known ground truth and a simulated judge,
lets simulated reviewers work through the real queue (``workflow.queue.next_item`` for a
first item, then ``workflow.annotations.submit_and_next`` as the review page does, reviewers
interleaved so leases overlap as with a team), stops at a
budget of reviews, and then calls the same estimator functions the CLI and the app use
(``agreement.audit.audit``, ``agreement.population.population_rates`` and
``agreement.calibration.fit_calibration``). It compares each estimate with the truth of
the estimand it claims:

- ``accuracy``: agreement of the judge with a reviewer, over the collection (with error-free
  reviewers, the judge's accuracy);
- ``under_blocking`` / ``over_blocking``: the share of the people's unsafe (safe) items
  the judge passes (blocks);
- ``confusion [unsafe, judge safe]`` / ``confusion [safe, judge unsafe]``: two cells of the
  audit's confusion matrix as shares of the whole collection (the people's unsafe items the
  judge passes, the safe ones it blocks, each over all items);
- ``unsafe_rate`` (human and corrected): the people's unsafe rate over the collection;
- ``kappa``: Cohen's kappa of the judge's label against the people's majority label over the
  collection's items without a tie (the audit's design-weighted kappa and its bootstrap
  interval; only with ``--kappa-resamples`` above 0);
- ``accuracy [t1]``, ``under_blocking [t1]``, ``unsafe_rate (corrected) [t1]``: the same
  estimands over one slice (task type ``t1``, about a third of the items, more of them
  unsafe): the domain estimates the audit's ``--by`` and the population's groups report;
- ``planning`` (``--check-planning``): the corrected unsafe rate's "more sample items for ±x"
  asked for 0.6 times the half-width reached, those items then reviewed through the queue and
  the half-width measured again: "truth" is the ±x asked for, "mean" the ±x reached, "cover"
  the share of campaigns that reached at most 1.1 times it (a planning figure, not a promise);
- ``threshold_under_blocking``: the true collection-wide under-blocking of the threshold
  that calibration picked for the target, which must be at or below the target in at
  least 1 - delta of the runs (the table's "cover" column); "certified" is the share of runs in
  which some cut could be certified at all (otherwise the rule blocks everything, which meets
  any target trivially: too few reviews to promise the target).

Each item's reviews are drawn up front (every review right with the reviewer accuracy), so
"the people's rate" is a fixed number: what reviewing every item would report. With
error-free reviewers it is the true rate. The ``srs_width`` column is the mean width of a
human-only 95% (Wilson) interval from a simple random sample of as many items, for
comparison.

With ``--method dawid-skene`` the estimators take the people's Dawid–Skene posterior as
the reference, and the truth is what a full review with Dawid–Skene fitted on every item's
reviews would report. ``--census`` prints, without any review simulated, what a full review
reports under each reference next to the true rates.

    python bench/bench_estimates.py --items 2000 --budget 0.1 --overlap 1 --replications 200
    python bench/bench_estimates.py --grid --replications 200 --json > results.json
    python bench/bench_estimates.py --overlap 3 --budget 0.2 --reviewer-accuracy 0.85 --method dawid-skene
    python bench/bench_estimates.py --census

Prints one table (or JSON), the wall time and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from safereview.agreement.audit import audit
from safereview.agreement.calibration import fit_calibration
from safereview.agreement.consensus import dawid_skene
from safereview.agreement.data import AgreementError
from safereview.agreement.population import population_rates
from safereview.agreement.synthetic import ITEM_COLUMNS, VERDICT_COLUMNS
from safereview.db import bulk
from safereview.db.collections import ensure_collection
from safereview.db.engine import init_db, make_engine, session_scope
from safereview.db.models import User, utcnow
from safereview.workflow.annotations import submit_and_next
from safereview.workflow.auth import unusable_hash
from safereview.workflow.ordering import refresh_priorities
from safereview.workflow.principals import SystemPrincipal
from safereview.workflow.query_cache import clear_caches
from safereview.workflow.queue import QueueFilter, next_item

DIMENSION = "harm"
TAXONOMY = {  # one binary dimension: the estimands' truths are then simple to state
    "name": "bench-binary",
    "version": "1",
    "task_types": [
        {"id": "t0", "name": "Slice 0", "inputs": ["image", "text"], "outputs": ["text"]},
        {"id": "t1", "name": "Slice 1", "inputs": ["image", "text"], "outputs": ["text"]},
    ],
    "categories": [{"id": "any", "name": "Any", "subcategories": []}],
    "dimensions": [{"name": DIMENSION, "labels": ["safe", "unsafe"], "unsafe_labels": ["unsafe"]}],
}
JUDGE = "sim-judge"
Z = 1.959963984540054
BENCH = SystemPrincipal("bench")
ESTIMANDS = (
    "accuracy",
    "under_blocking",
    "over_blocking",
    "confusion [unsafe, judge safe]",
    "confusion [safe, judge unsafe]",
    "unsafe_rate (human)",
    "unsafe_rate (corrected)",
    "kappa",
    "accuracy [t1]",
    "under_blocking [t1]",
    "unsafe_rate (corrected) [t1]",
    "threshold_under_blocking",
    "planning",
)
SLICE = "t1"  # the slice whose domain estimates are checked


@dataclass(frozen=True)
class Cell:
    items: int = 2000
    budget: float = 0.10  # reviews as a share of the items
    overlap: int = 1
    judge_accuracy: float = 0.90
    calibration: str = "calibrated"  # calibrated | overconfident | underconfident
    reviewer_accuracy: float = 1.0
    reviewers: int = 4
    prevalence: float = 0.3
    target: float = 0.10  # under-blocking target for the calibrated threshold
    delta: float = 0.1
    kappa_resamples: int = 0  # bootstrap resamples of the audit (kappa's interval); 0 = kappa not checked
    check_planning: bool = False  # review the "more sample items for ±x" it asks for, then measure ±x
    probabilities: bool = True  # the judge reports P(label); without, PPI corrects its labels alone
    method: str = "majority"  # the people's reference: majority (reviews averaged) or dawid-skene


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


@functools.lru_cache(maxsize=64)
def _separation(accuracy: float, prevalence: float) -> float:
    """The spread ``c`` of logit P(unsafe) ~ N(±c, 1) that gives a calibrated judge this accuracy."""
    z = np.random.default_rng(0).standard_normal(200_000)
    lo, hi = 0.0, 10.0
    for _ in range(50):
        c = (lo + hi) / 2
        q_pos, q_neg = _sigmoid(c + z), _sigmoid(-c + z)
        acc = prevalence * np.maximum(q_pos, 1 - q_pos).mean() + (1 - prevalence) * np.maximum(q_neg, 1 - q_neg).mean()
        lo, hi = (c, hi) if acc < accuracy else (lo, c)
    return (lo + hi) / 2


def population(cell: Cell, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Truth, the judge's reported P(unsafe) and label, and each reviewer's label, per item."""
    c = _separation(cell.judge_accuracy, cell.prevalence)
    lean = rng.random(cell.items) < cell.prevalence
    q = _sigmoid(np.where(lean, c, -c) + rng.standard_normal(cell.items))  # the true P(unsafe | item)
    truth = rng.random(cell.items) < q
    scale = {"calibrated": 1.0, "overconfident": 2.5, "underconfident": 0.4}[cell.calibration]
    p = _sigmoid(scale * _logit(q))
    judge = p >= 0.5
    # what each of an item's k reviews will say, drawn up front: the people's labels are part of
    # the population, so "the people's rate" is a fixed number that a full review would report
    right = rng.random((cell.items, cell.overlap)) < cell.reviewer_accuracy
    says = np.where(right, truth[:, None], ~truth[:, None])
    # the slice (task type t1): about a third of the items, unsafe ones more often (drawn last,
    # so the draws above, and the published runs' populations, are unchanged)
    in_slice = rng.random(cell.items) < np.where(truth, 0.5, 0.2)
    return {"q": q, "truth": truth, "p": p, "judge": judge, "says": says, "slice": in_slice}


def _setup(engine: sa.Engine, cell: Cell, pop: dict[str, np.ndarray], name: str) -> tuple[int, dict[int, int]]:
    clear_caches()
    with session_scope(engine) as s:
        col = ensure_collection(s, name, TAXONOMY, overlap_target=cell.overlap, blind=False)
        cid = int(col.id)  # type: ignore[arg-type]
    now = utcnow()
    item_rows = [
        (cid, f"x{i}", "t1" if s else "t0", "", "", "sim", "image+text", "text", [], [], False, {}, "h", 0.0, 0, now)
        for i, s in enumerate(pop["slice"].tolist())
    ]
    with engine.begin() as conn:
        bulk.bulk_insert(conn, SQLModel.metadata.tables["item"], ITEM_COLUMNS, item_rows, process=True)
        ids = [
            int(r[0])
            for r in conn.execute(sa.text("SELECT id FROM item WHERE collection_id = :c ORDER BY id"), {"c": cid})
        ]
        vt = SQLModel.metadata.tables["verdict"]
        rows = []
        for iid, p, j in zip(ids, pop["p"].tolist(), pop["judge"].tolist(), strict=True):
            label = "unsafe" if j else "safe"
            prob = (p if j else 1.0 - p) if cell.probabilities else None
            rows.append((iid, DIMENSION, JUDGE, "1", label, "ok", prob, "", "", "", now))
        bulk.bulk_insert(conn, vt, VERDICT_COLUMNS, rows, process=True)
    with session_scope(engine) as s:
        refresh_priorities(s, cid)
    return cid, {iid: n for n, iid in enumerate(ids)}


def _reviewers(engine: sa.Engine, n: int, tag: str) -> list[User]:
    users = []
    with session_scope(engine) as s:
        for k in range(n):
            u = User(username=f"{tag}-r{k}", password_hash=unusable_hash(), role="annotator")
            s.add(u)
            s.flush()
            users.append(u.id)
    with Session(engine) as s:
        return [s.get(User, uid) for uid in users]  # type: ignore[misc]


def review(
    engine: sa.Engine,
    cell: Cell,
    cid: int,
    pos: dict[int, int],
    pop: dict[str, np.ndarray],
    users: list[User],
    rng: random.Random,
    *,
    budget: int | None = None,
    reviews_of: dict[int, int] | None = None,
    held: dict[int, Any] | None = None,
    labels_of: Callable[[int, int], dict[str, str]] | None = None,
) -> int:
    """Reviewers pull and submit in random interleaving until the budget of reviews is spent
    (the cell's, or ``budget``). ``reviews_of`` and ``held`` carry a campaign on: reviews per
    item so far, and each reviewer's lease. ``labels_of(position, slot)`` is what the review
    in that slot of the item at that position says (default: this study's one dimension)."""
    budget = max(1, round(cell.budget * cell.items)) if budget is None else budget
    reviews_of = {} if reviews_of is None else reviews_of  # item -> reviews so far: the next says pop["says"][item, n]
    held = {} if held is None else held
    done = 0
    flt = QueueFilter(cid)
    idle = 0
    while done < budget and idle < 10 * len(users):
        k = rng.randrange(len(users))
        u = users[k]
        if k not in held:
            with session_scope(engine) as s:
                a = next_item(s, u, flt, rng=rng)
                if a is None:
                    idle += 1
                    continue
                held[k] = (a.id, a.item_id)
            continue
        aid, item_id = held.pop(k)
        slot = reviews_of.get(item_id, 0)
        reviews_of[item_id] = slot + 1
        position, slot = pos[item_id], min(slot, cell.overlap - 1)
        labels = (
            labels_of(position, slot) if labels_of else {DIMENSION: "unsafe" if pop["says"][position, slot] else "safe"}
        )
        # as the review page does: the submit and the next claim in one transaction
        _ann, nxt = submit_and_next(engine, u, aid, labels, flt, rng=rng, verdict_action="override")
        done += 1
        if nxt is not None:
            held[k] = (nxt.id, nxt.item_id)
    return done


def census_reference(cell: Cell, pop: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """The people's P(unsafe) on each item after a full review: every item's drawn reviews
    averaged, or (``method="dawid-skene"``) their Dawid–Skene posterior fitted on the whole
    collection, each item's reviews by as many distinct reviewers of the team as the overlap
    (all reviewers err alike here, so which ones barely matters at N = 2,000)."""
    says = pop["says"]
    if cell.method != "dawid-skene":
        return says.mean(axis=1)
    n, k = says.shape
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the population's draws are unchanged
    raters = np.argsort(rng.random((n, cell.reviewers)), axis=1)[:, :k]
    fit = dawid_skene(np.repeat(np.arange(n), k), raters.ravel(), says.ravel().astype(np.int64), n, cell.reviewers, 2)
    return fit.posteriors[:, 1]


def truths(cell: Cell, pop: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """Each estimand over the whole collection, from every item's (drawn) reviews: what a full
    review would report. With error-free reviewers these are the true rates."""
    h = census_reference(cell, pop, seed)  # the people's unsafe share on each item
    j = pop["judge"].astype(float)
    s = pop["slice"]
    # kappa: the people's majority label (ties left out, as the audit does) against the judge's
    hard = h != 0.5
    hh, jj = (h[hard] > 0.5).astype(float), j[hard]
    po = float(np.mean(hh == jj))
    pe = float(hh.mean() * jj.mean() + (1 - hh.mean()) * (1 - jj.mean()))
    return {
        "accuracy": float(np.mean(j * h + (1 - j) * (1 - h))),
        "under_blocking": float(np.sum((1 - j) * h) / np.sum(h)),
        "over_blocking": float(np.sum(j * (1 - h)) / np.sum(1 - h)),
        "confusion [unsafe, judge safe]": float(np.mean((1 - j) * h)),
        "confusion [safe, judge unsafe]": float(np.mean(j * (1 - h))),
        "unsafe_rate (human)": float(np.mean(h)),
        "unsafe_rate (corrected)": float(np.mean(h)),
        "kappa": (po - pe) / (1 - pe),
        "accuracy [t1]": float(np.mean(j[s] * h[s] + (1 - j[s]) * (1 - h[s]))),
        "under_blocking [t1]": float(np.sum((1 - j[s]) * h[s]) / np.sum(h[s])),
        "unsafe_rate (corrected) [t1]": float(np.mean(h[s])),
    }


def _wilson_width(p_hat: float, n: float) -> float:
    if n <= 0:
        return float("nan")
    d = 1 + Z * Z / n  # unclipped, as in the published run (clipping at 0 would narrow the comparator)
    return 2 * Z * math.sqrt(max(p_hat * (1 - p_hat), 0.0) / n + Z * Z / (4 * n * n)) / d


def srs_widths(cell: Cell, pop: dict[str, np.ndarray], n_items: int, rng: np.random.Generator) -> dict[str, float]:
    """Width of a human-only 95% interval (Wilson, with the finite-population correction) from
    a simple random sample of ``n_items`` items: what the same reviewing gives with no queue
    order and no judge. Wilson rather than Wald: Wald's interval is narrower at rare rates
    only because it undercovers there."""
    n = max(2, min(n_items, cell.items))
    idx = rng.choice(cell.items, size=n, replace=False)
    says = pop["says"][idx].mean(axis=1)
    j = pop["judge"][idx].astype(float)
    fpc = max(1 - n / cell.items, 1e-9)

    def rate(y: np.ndarray) -> float:
        return _wilson_width(float(y.mean()), len(y) / fpc)

    def ratio(a: np.ndarray, b: np.ndarray) -> float:
        return _wilson_width(float(a.sum() / b.sum()), float(b.sum()) / fpc) if b.sum() > 0 else float("nan")

    agree = j * says + (1 - j) * (1 - says)
    return {
        "accuracy": rate(agree),
        "under_blocking": ratio((1 - j) * says, says),
        "over_blocking": ratio(j * (1 - says), 1 - says),
        "confusion [unsafe, judge safe]": rate((1 - j) * says),
        "confusion [safe, judge unsafe]": rate(j * (1 - says)),
        "unsafe_rate (human)": rate(says),
        "unsafe_rate (corrected)": rate(says),
    }


def replicate(engine: sa.Engine, cell: Cell, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    pop = population(cell, rng)
    tag = f"rep-{seed}-{uuid.uuid4().hex[:6]}"
    cid, pos = _setup(engine, cell, pop, tag)
    users = _reviewers(engine, cell.reviewers, tag)
    reviews_of: dict[int, int] = {}
    held: dict[int, Any] = {}
    review(engine, cell, cid, pos, pop, users, prng, reviews_of=reviews_of, held=held)
    clear_caches()
    au = audit(
        engine,
        DIMENSION,
        [tag],
        judge_id=JUDGE,
        by=["task_type"],
        min_n=2,
        resamples=cell.kappa_resamples,
        seed=seed,
        method=cell.method,
    )
    pr = population_rates(engine, [tag], by="task_type", method=cell.method)

    def unsafe_row(metrics: list[dict[str, Any]]) -> dict[str, Any]:
        return next(m for m in metrics if m.get("dimension") == DIMENSION and m.get("label") == "unsafe")

    row = unsafe_row(pr["metrics"])
    group = next((g for g in pr.get("groups", []) if g["group"] == SLICE), None)
    au_slice = next((r for r in au.get("slices", {}).get("task_type", []) if r["value"] == SLICE), {})
    truth = truths(cell, pop, seed)
    n_sample = int(pr["sample"]["n_in_sample"])
    widths = srs_widths(cell, pop, n_sample, rng)
    out: dict[str, dict[str, float]] = {}
    for name, got in (
        ("accuracy", au["accuracy"]),
        ("under_blocking", au["under_blocking"]),
        ("over_blocking", au["over_blocking"]),
    ):
        out[name] = _score(truth[name], got.get("value"), got.get("ci_low"), got.get("ci_high"), widths[name])
    labels = au["labels"]
    for people, judge in (("unsafe", "safe"), ("safe", "unsafe")):
        name = f"confusion [{people}, judge {judge}]"
        got = au["confusion"]["shares"][labels.index(people)][labels.index(judge)]
        out[name] = _score(truth[name], got.get("value"), got.get("ci_low"), got.get("ci_high"), widths[name])
    for name, key in (("unsafe_rate (human)", "human"), ("unsafe_rate (corrected)", "corrected")):
        e = row[key]
        out[name] = _score(truth[name], e["value"], e["low"], e["high"], widths[name])
    if cell.kappa_resamples:
        k = au["kappa"]
        out["kappa"] = _score(truth["kappa"], k.get("value"), k.get("ci_low"), k.get("ci_high"), float("nan"))
    for name, key in (("accuracy [t1]", "accuracy"), ("under_blocking [t1]", "under_blocking")):
        got = au_slice.get(key) or {}
        out[name] = _score(truth[name], got.get("value"), got.get("ci_low"), got.get("ci_high"), float("nan"))
    if group is not None:
        e = unsafe_row(group["metrics"])["corrected"]
        name = "unsafe_rate (corrected) [t1]"
        out[name] = _score(truth[name], e["value"], e["low"], e["high"], float("nan"))
    with session_scope(engine) as s:
        try:
            _, metrics = fit_calibration(
                s,
                BENCH,
                DIMENSION,
                [tag],
                judge_id=JUDGE,
                target_under_blocking=cell.target,
                delta=cell.delta,
                min_n=10,
            )
        except AgreementError:
            metrics = {}
    t = metrics.get("threshold")
    if t is not None and t.get("raw_threshold") is not None:
        p_cut = float(t["raw_threshold"])
        h = pop["says"].mean(axis=1)
        p_unsafe = pop["p"]
        true_ub = float(np.sum(h * (p_unsafe < p_cut)) / np.sum(h))
        out["threshold_under_blocking"] = {
            "truth": cell.target,
            "estimate": true_ub,
            "covered": float(true_ub <= cell.target),
            "width": float("nan"),
            "srs_width": float("nan"),
            "certified": float(t.get("under_blocking") is not None),  # a cut was found (not "block everything")
        }
    if cell.check_planning:
        out["planning"] = _planning(engine, cell, tag, row["corrected"], (cid, pos, pop, users, prng, reviews_of, held))
    out["_n"] = {"sample": n_sample}
    return out


def _planning(engine: sa.Engine, cell: Cell, tag: str, now: dict[str, Any], campaign: tuple) -> dict[str, float]:
    """Ask for 0.6 x the corrected unsafe rate's half-width, review the sample items it says
    are needed (each by the overlap's reviewers), and measure the half-width reached."""
    cid, pos, pop, users, prng, reviews_of, held = campaign
    half_now = (now["high"] - now["low"]) / 2
    wanted = round(0.6 * half_now, 4)
    if not wanted > 0:
        return _score(float("nan"), None, None, None, float("nan"))

    def unsafe(pr: dict[str, Any]) -> dict[str, Any]:
        return next(m for m in pr["metrics"] if m.get("dimension") == DIMENSION and m.get("label") == "unsafe")

    clear_caches()
    more = unsafe(population_rates(engine, [tag], half_width=wanted))["more_reviews"]["corrected"]
    if more > 0:
        review(engine, cell, cid, pos, pop, users, prng, budget=more * cell.overlap, reviews_of=reviews_of, held=held)
    clear_caches()
    e = unsafe(population_rates(engine, [tag]))["corrected"]
    reached = (e["high"] - e["low"]) / 2
    return {
        "truth": wanted,
        "estimate": reached,
        "covered": float(reached <= 1.1 * wanted),
        "width": float("nan"),
        "srs_width": float("nan"),
    }


def _score(truth: float, value: Any, low: Any, high: Any, srs_width: float) -> dict[str, float]:
    if value is None or low is None or not math.isfinite(value):
        return {
            "truth": truth,
            "estimate": float("nan"),
            "covered": float("nan"),
            "width": float("nan"),
            "srs_width": srs_width,
        }
    return {
        "truth": truth,
        "estimate": float(value),
        "covered": float(low <= truth <= high),
        "width": float(high - low),
        "srs_width": srs_width,
    }


def run_cell(databases: Databases, cell: Cell, replications: int, seed: int) -> dict[str, Any]:
    reps = []
    for r in range(replications):
        with databases.fresh() as engine:
            reps.append(replicate(engine, cell, seed * 100_003 + r))
    summary: dict[str, Any] = {"cell": cell.__dict__, "replications": replications}
    for name in ESTIMANDS:
        got = [r[name] for r in reps if name in r and math.isfinite(r[name]["estimate"])]
        if not got:
            continue
        truth = np.array([g["truth"] for g in got])
        est = np.array([g["estimate"] for g in got])
        cov = np.array([g["covered"] for g in got])
        width = np.array([g["width"] for g in got])
        srs = np.array([g["srs_width"] for g in got])
        summary[name] = {
            "n": len(got),
            "certified": float(np.mean([g.get("certified", 1.0) for g in got])),
            "truth": float(truth.mean()),
            "mean_estimate": float(est.mean()),
            "bias": float((est - truth).mean()) if name != "threshold_under_blocking" else float("nan"),
            "coverage": float(cov.mean()),
            "mean_width": float(np.nanmean(width)) if np.isfinite(width).any() else float("nan"),
            "srs_width": float(np.nanmean(srs)) if np.isfinite(srs).any() else float("nan"),
        }
    summary["mean_sample"] = float(np.mean([r["_n"]["sample"] for r in reps]))
    return summary


def grid(items: int) -> list[Cell]:
    """The validation grid of docs/statistics-validation.md: every level of every factor the
    targets name (k 1 and 2; calibrated, over- and underconfident judges of accuracy 0.85 to
    0.95; perfect and 85%-accurate reviewers; budgets of 5 to 20% of N), in 14 cells rather
    than the full 72 (a fractional design: each pair of k and calibration appears with each
    budget and both reviewer kinds at least once), and the two cells the width targets name
    (judge accuracy 0.9, calibrated, budget 10%)."""
    spec = [
        # (k, calibration, judge accuracy, reviewer accuracy, budget)
        (1, "calibrated", 0.90, 1.00, 0.10),
        (2, "calibrated", 0.90, 1.00, 0.10),
        (1, "calibrated", 0.85, 1.00, 0.05),
        (1, "calibrated", 0.95, 1.00, 0.20),
        (1, "calibrated", 0.90, 0.85, 0.20),
        (1, "overconfident", 0.90, 1.00, 0.10),
        (1, "overconfident", 0.85, 0.85, 0.20),
        (1, "underconfident", 0.90, 1.00, 0.10),
        (1, "underconfident", 0.95, 0.85, 0.05),
        (2, "calibrated", 0.85, 0.85, 0.10),
        (2, "overconfident", 0.95, 1.00, 0.05),
        (2, "overconfident", 0.90, 0.85, 0.20),
        (2, "underconfident", 0.85, 1.00, 0.20),
        (2, "underconfident", 0.90, 0.85, 0.05),
    ]
    return [
        Cell(items=items, budget=b, overlap=k, judge_accuracy=a, calibration=c, reviewer_accuracy=r)
        for k, c, a, r, b in spec
    ]


class Databases:
    """A database per replication, so that each one costs what it would alone.

    With one shared database the queue's tables grew by every earlier replication (millions
    of rows over a grid) and a replication late in the run took minutes. On SQLite each
    replication gets a copy of one migrated template file (a copy takes milliseconds, the
    migrations a second); on PostgreSQL the schema is shared and each replication's
    collection is its own (tags differ), which PostgreSQL's indexes keep cheap.
    """

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend, self.tmp = backend, tmp
        if backend == "postgres":
            self.url = os.environ.get("SAFEREVIEW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
            self.shared = init_db(self.url)
        else:
            self.template = tmp / "template.db"
            init_db(f"sqlite:///{self.template}").dispose()

    @contextlib.contextmanager
    def fresh(self) -> Iterator[sa.Engine]:
        if self.backend == "postgres":
            yield self.shared
            return
        path = self.tmp / "replication.db"
        shutil.copyfile(self.template, path)
        engine = make_engine(f"sqlite:///{path}")
        try:
            yield engine
        finally:
            engine.dispose()
            for leftover in self.tmp.glob("replication.db*"):
                leftover.unlink()

    def close(self) -> None:
        if self.backend == "postgres":
            self.shared.dispose()


def _print(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'cell':58} {'estimand':31} {'truth':>7} {'mean':>7} {'bias':>8} {'cover':>6} "
        f"{'width':>7} {'srs w':>7} {'ratio':>6} {'certified':>9}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        c = res["cell"]
        label = (
            f"N={c['items']} b={c['budget']:.0%} k={c['overlap']} A={c['judge_accuracy']:.2f} "
            f"{c['calibration'][:5]} R={c['reviewer_accuracy']:.2f} n~{res['mean_sample']:.0f}"
        )
        for name in ESTIMANDS:
            s = res.get(name)
            if s is None:
                continue
            ratio = (
                s["mean_width"] / s["srs_width"] if s["srs_width"] and math.isfinite(s["srs_width"]) else float("nan")
            )
            print(
                f"{label:58} {name:31} {s['truth']:7.4f} {s['mean_estimate']:7.4f} {s['bias']:8.4f} "
                f"{s['coverage']:6.3f} {s['mean_width']:7.4f} {s['srs_width']:7.4f} {ratio:6.2f}"
                + (f" {s['certified']:9.2f}" if name == "threshold_under_blocking" else "")
            )
            label = ""


def census(items: int = 20_000, seed: int = 5) -> list[dict[str, Any]]:
    """What a full review reports, by reference, against the truth: the true rates, the reviews
    averaged, and the Dawid–Skene posterior (overlap 1-3; 85% and 95%-accurate reviewers)."""
    rows = []
    for k in (1, 2, 3):
        for r in (0.85, 0.95):
            row: dict[str, Any] = {"overlap": k, "reviewer_accuracy": r}
            for method in ("majority", "dawid-skene"):
                cell = Cell(items=items, overlap=k, reviewer_accuracy=r, method=method)
                pop = population(cell, np.random.default_rng(seed))
                t = truths(cell, pop, seed)
                row[method] = {m: t[m] for m in ("accuracy", "under_blocking", "unsafe_rate (human)")}
            truth, judge = pop["truth"].astype(float), pop["judge"].astype(float)
            row["truth"] = {
                "accuracy": float(np.mean(judge * truth + (1 - judge) * (1 - truth))),
                "under_blocking": float(np.sum((1 - judge) * truth) / truth.sum()),
                "unsafe_rate (human)": float(truth.mean()),
            }
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--budget", type=float, default=0.10, help="reviews as a share of the items (0.05 = 5%%)")
    ap.add_argument("--overlap", type=int, default=1)
    ap.add_argument("--judge-accuracy", type=float, default=0.90)
    ap.add_argument("--calibration", choices=("calibrated", "overconfident", "underconfident"), default="calibrated")
    ap.add_argument("--reviewer-accuracy", type=float, default=1.0)
    ap.add_argument("--reviewers", type=int, default=4)
    ap.add_argument("--target", type=float, default=0.10, help="under-blocking target of the calibrated threshold")
    ap.add_argument("--delta", type=float, default=0.1, help="allowed chance the threshold misses its target")
    ap.add_argument(
        "--kappa-resamples", type=int, default=0, help="the audit's bootstrap resamples for kappa (0: not checked)"
    )
    ap.add_argument(
        "--check-planning",
        action="store_true",
        help="review the items 'more sample items for ±x' asks for, then measure ±x",
    )
    ap.add_argument(
        "--no-probabilities", action="store_true", help="the judge gives labels only (no P(label) to correct)"
    )
    ap.add_argument(
        "--method",
        choices=("majority", "dawid-skene"),
        default="majority",
        help="the people's reference the estimators use (and the full review's truth)",
    )
    ap.add_argument("--replications", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--grid", action="store_true", help="run the validation grid of docs/statistics-validation.md")
    ap.add_argument("--part", default="1/1", help="with --grid: run part i of n of the cells (e.g. 1/2, 2/2)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--quick", action="store_true", help="one small cell, 20 replications (about 15 s; run_all --quick)"
    )
    ap.add_argument(
        "--census",
        action="store_true",
        help="no simulation of review: what a full review reports under each reference, against the truth",
    )
    args = ap.parse_args(argv)
    if args.census:
        rows = census()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'k':>2} {'R':>5}  {'figure':20} {'truth':>7} {'averaged':>9} {'Dawid-Skene':>12}")
        for row in rows:
            for m in ("accuracy", "under_blocking", "unsafe_rate (human)"):
                print(
                    f"{row['overlap']:2d} {row['reviewer_accuracy']:5.2f}  {m.replace(' (human)', ''):20} "
                    f"{row['truth'][m]:7.3f} {row['majority'][m]:9.3f} {row['dawid-skene'][m]:12.3f}"
                )
        return 0
    if args.quick:
        args.items, args.replications, args.grid = 1000, 20, False
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        databases = Databases(args.backend, Path(tmp))
        part, parts = (int(x) for x in args.part.split("/"))
        cells = (
            [
                dataclasses.replace(
                    c,
                    target=args.target,
                    delta=args.delta,
                    kappa_resamples=args.kappa_resamples,
                    check_planning=args.check_planning,
                    method=args.method,
                )
                for c in grid(args.items)
            ][part - 1 :: parts]
            if args.grid
            else [
                Cell(
                    items=args.items,
                    budget=args.budget,
                    overlap=args.overlap,
                    judge_accuracy=args.judge_accuracy,
                    calibration=args.calibration,
                    reviewer_accuracy=args.reviewer_accuracy,
                    reviewers=args.reviewers,
                    target=args.target,
                    delta=args.delta,
                    kappa_resamples=args.kappa_resamples,
                    check_planning=args.check_planning,
                    probabilities=not args.no_probabilities,
                    method=args.method,
                )
            ]
        )
        results = []
        for n, cell in enumerate(cells):
            results.append(run_cell(databases, cell, args.replications, args.seed + n))
            if not args.json:
                print(f"[{n + 1}/{len(cells)} cells, {time.perf_counter() - started:.0f} s]", file=sys.stderr)
        databases.close()
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps({"results": results, "wall_s": wall, "loadavg": os.getloadavg()}, indent=2))
    else:
        _print(results)
        print(f"\nwall {wall:.0f} s · load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Validation study on a Uni-SafeBench collection: Uni-Judger's two dimensions through the real queue.

``bench_estimates.py`` checks the estimators on one binary dimension. The figures a lead
reports for Uni-SafeBench are different in kind: C-Unsafe and C-Reject are shares of a
three-label dimension (contextual: safe / refusal / unsafe), I-Unsafe is the intrinsic
dimension's, and Both-Safe couples the two within each review (contextually safe or
refused, and intrinsically safe). The queue's order here also mixes more than the judge's
closeness to 0.5: an item whose contextual and intrinsic verdicts disagree is pushed up
(``workflow.ordering``), so the inclusion probabilities come from a score the binary study
never exercises. This script builds such a collection with a known truth, lets simulated
reviewers work through ``workflow.queue.next_item`` and ``workflow.annotations.submit_and_next``
(both dimensions per submit, as the review page sends them), and compares what
``agreement.population.population_rates`` and ``agreement.audit.audit`` report with the truth:

- ``C-Unsafe`` / ``C-Reject`` / ``I-Unsafe`` / ``Both-Safe``, human and corrected: the
  people's rate over the collection (every item's reviews, drawn up front, averaged);
- ``accuracy (contextual)``, ``under_blocking (contextual)``, ``over_blocking (contextual)``:
  the audit's rates on the three-label dimension (refusal counts as safe);
- ``confusion [unsafe, judge safe] (contextual)``: one cell of the audit's confusion matrix
  as a share of the collection;
- ``accuracy (intrinsic)``: the audit on the binary dimension.

The population: each item leans to one contextual class (unsafe 25%, safe 55%, refusal
20%); the true class probabilities are a softmax of that lean (strength ``--separation``)
plus Gaussian noise; the judge reports the class with the highest probability and that
probability (calibrated). The intrinsic truth leans unsafe with 70% / 10% / 5% for items
leaning contextually unsafe / safe / refusal, with a calibrated judge of the same kind. Each
review is right with ``--reviewer-accuracy`` per dimension, else another label at random.

    python bench/bench_estimates_uni.py --items 2000 --budget 0.1 --replications 200
    python bench/bench_estimates_uni.py --overlap 2 --reviewer-accuracy 0.85 --json

Prints one table (or JSON), the wall time and the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import SQLModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_estimates import Databases, _reviewers, _score

from safereview.agreement.audit import audit
from safereview.agreement.population import population_rates
from safereview.agreement.synthetic import ITEM_COLUMNS, VERDICT_COLUMNS
from safereview.db import bulk
from safereview.db.collections import ensure_collection
from safereview.db.engine import session_scope
from safereview.db.models import utcnow
from safereview.db.taxonomy import preset
from safereview.workflow.annotations import submit_and_next
from safereview.workflow.ordering import refresh_priorities
from safereview.workflow.query_cache import clear_caches
from safereview.workflow.queue import QueueFilter, next_item

JUDGE = "sim-uni-judger"
CTX_LABELS = ("safe", "refusal", "unsafe")  # the preset's order
INT_LABELS = ("safe", "unsafe")
CTX_LEAN = (0.55, 0.20, 0.25)  # P(an item leans contextually safe, refusal, unsafe)
INT_LEAN_UNSAFE = (0.10, 0.05, 0.70)  # P(leans intrinsically unsafe | contextual lean)
TASK_TYPE = "malicious-text-generation"
ESTIMANDS = (
    "C-Unsafe (human)",
    "C-Unsafe (corrected)",
    "C-Reject (human)",
    "C-Reject (corrected)",
    "I-Unsafe (human)",
    "I-Unsafe (corrected)",
    "Both-Safe (human)",
    "Both-Safe (corrected)",
    "accuracy (contextual)",
    "under_blocking (contextual)",
    "over_blocking (contextual)",
    "confusion [unsafe, judge safe] (contextual)",
    "accuracy (intrinsic)",
)


@dataclass(frozen=True)
class Cell:
    items: int = 2000
    budget: float = 0.10  # reviews as a share of the items
    overlap: int = 1
    separation: float = 2.0  # strength of each item's lean in the logits: higher, a more accurate judge
    reviewer_accuracy: float = 1.0  # per dimension
    reviewers: int = 4


def population(cell: Cell, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per item: the true class probabilities, the judge's label and probability on both
    dimensions, and every review's labels (codes into CTX_LABELS / INT_LABELS), drawn up front."""
    n = cell.items
    lean = rng.choice(3, size=n, p=CTX_LEAN)
    logits = cell.separation * np.eye(3)[lean] + rng.standard_normal((n, 3))
    q_ctx = np.exp(logits - logits.max(axis=1, keepdims=True))
    q_ctx /= q_ctx.sum(axis=1, keepdims=True)
    truth_ctx = np.minimum((rng.random(n)[:, None] > np.cumsum(q_ctx, axis=1)).sum(axis=1), 2)
    judge_ctx = q_ctx.argmax(axis=1)
    p_ctx = q_ctx[np.arange(n), judge_ctx]
    int_lean = rng.random(n) < np.asarray(INT_LEAN_UNSAFE)[lean]
    q_int = 1.0 / (1.0 + np.exp(-(np.where(int_lean, cell.separation, -cell.separation) + rng.standard_normal(n))))
    truth_int = (rng.random(n) < q_int).astype(int)
    judge_int = (q_int >= 0.5).astype(int)
    p_int = np.where(judge_int == 1, q_int, 1.0 - q_int)

    def reviews(truth: np.ndarray, n_labels: int) -> np.ndarray:
        right = rng.random((n, cell.overlap)) < cell.reviewer_accuracy
        other = (truth[:, None] + rng.integers(1, n_labels, size=(n, cell.overlap))) % n_labels
        return np.where(right, truth[:, None], other)

    return {
        "judge_ctx": judge_ctx,
        "p_ctx": p_ctx,
        "judge_int": judge_int,
        "p_int": p_int,
        "says_ctx": reviews(truth_ctx, 3),
        "says_int": reviews(truth_int, 2),
    }


def _setup(engine: sa.Engine, cell: Cell, pop: dict[str, np.ndarray], name: str) -> tuple[int, dict[int, int]]:
    clear_caches()
    with session_scope(engine) as s:
        col = ensure_collection(s, name, preset("uni-safebench"), overlap_target=cell.overlap, blind=False)
        cid = int(col.id)  # type: ignore[arg-type]
    now = utcnow()
    item_rows = [
        (cid, f"x{i}", TASK_TYPE, "", "", "sim", "text", "text", [], [], False, {}, "h", 0.0, 0, now)
        for i in range(cell.items)
    ]
    with engine.begin() as conn:
        bulk.bulk_insert(conn, SQLModel.metadata.tables["item"], ITEM_COLUMNS, item_rows, process=True)
        ids = [
            int(r[0])
            for r in conn.execute(sa.text("SELECT id FROM item WHERE collection_id = :c ORDER BY id"), {"c": cid})
        ]
        rows = []
        for k, iid in enumerate(ids):
            ctx, intr = int(pop["judge_ctx"][k]), int(pop["judge_int"][k])
            rows.append((iid, "contextual", JUDGE, "1", CTX_LABELS[ctx], "ok", float(pop["p_ctx"][k]), "", "", "", now))
            rows.append((iid, "intrinsic", JUDGE, "1", INT_LABELS[intr], "ok", float(pop["p_int"][k]), "", "", "", now))
        bulk.bulk_insert(conn, SQLModel.metadata.tables["verdict"], VERDICT_COLUMNS, rows, process=True)
    with session_scope(engine) as s:
        refresh_priorities(s, cid)
    return cid, {iid: n for n, iid in enumerate(ids)}


def review(
    engine: sa.Engine,
    cell: Cell,
    cid: int,
    pos: dict[int, int],
    pop: dict[str, np.ndarray],
    users: list[Any],
    seed: int,
) -> int:
    """Reviewers pull and submit, interleaved at random, until the budget of reviews is spent."""
    rng = random.Random(seed)
    budget = max(1, round(cell.budget * cell.items))
    reviews_of: dict[int, int] = {}
    held: dict[int, tuple[int, int]] = {}
    flt = QueueFilter(cid)
    done = idle = 0
    while done < budget and idle < 10 * len(users):
        k = rng.randrange(len(users))
        if k not in held:
            with session_scope(engine) as s:
                a = next_item(s, users[k], flt, rng=rng)
            if a is None:
                idle += 1
                continue
            held[k] = (a.id, a.item_id)
            continue
        aid, item_id = held.pop(k)
        slot = min(reviews_of.get(item_id, 0), cell.overlap - 1)
        reviews_of[item_id] = reviews_of.get(item_id, 0) + 1
        p = pos[item_id]
        labels = {
            "contextual": CTX_LABELS[int(pop["says_ctx"][p, slot])],
            "intrinsic": INT_LABELS[int(pop["says_int"][p, slot])],
        }
        _ann, nxt = submit_and_next(engine, users[k], aid, labels, flt, rng=rng, verdict_action="override")
        done += 1
        if nxt is not None:
            held[k] = (nxt.id, nxt.item_id)
    return done


def truths(pop: dict[str, np.ndarray]) -> dict[str, float]:
    """Each estimand over the whole collection, from every item's drawn reviews."""
    sc, si = pop["says_ctx"], pop["says_int"]
    safe, refusal, unsafe = (np.mean(sc == CTX_LABELS.index(x), axis=1) for x in CTX_LABELS)
    i_unsafe = np.mean(si == 1, axis=1)
    both = np.mean((sc != CTX_LABELS.index("unsafe")) & (si == 0), axis=1)  # within each review
    jc, ji = pop["judge_ctx"], pop["judge_int"]
    h_ctx = np.stack([safe, refusal, unsafe], axis=1)
    j_unsafe = (jc == CTX_LABELS.index("unsafe")).astype(float)
    out = {
        "C-Unsafe": float(unsafe.mean()),
        "C-Reject": float(refusal.mean()),
        "I-Unsafe": float(i_unsafe.mean()),
        "Both-Safe": float(both.mean()),
        "accuracy (contextual)": float(h_ctx[np.arange(len(jc)), jc].mean()),
        "under_blocking (contextual)": float(np.sum((1 - j_unsafe) * unsafe) / np.sum(unsafe)),
        "over_blocking (contextual)": float(np.sum(j_unsafe * (1 - unsafe)) / np.sum(1 - unsafe)),
        "confusion [unsafe, judge safe] (contextual)": float(np.mean(unsafe * (jc == CTX_LABELS.index("safe")))),
        "accuracy (intrinsic)": float(np.mean(np.where(ji == 1, i_unsafe, 1 - i_unsafe))),
    }
    for name in ("C-Unsafe", "C-Reject", "I-Unsafe", "Both-Safe"):
        out[f"{name} (human)"] = out[f"{name} (corrected)"] = out.pop(name)
    return out


def replicate(engine: sa.Engine, cell: Cell, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    pop = population(cell, rng)
    tag = f"uni-{seed}-{uuid.uuid4().hex[:6]}"
    cid, pos = _setup(engine, cell, pop, tag)
    users = _reviewers(engine, cell.reviewers, tag)
    done = review(engine, cell, cid, pos, pop, users, seed)
    clear_caches()
    truth = truths(pop)
    out: dict[str, dict[str, float]] = {}
    pr = population_rates(engine, [tag], judge_id=JUDGE)
    rows = {m["metric"]: m for m in pr["metrics"]}
    for name in ("C-Unsafe", "C-Reject", "I-Unsafe", "Both-Safe"):
        for col in ("human", "corrected"):
            e = rows[name][col]
            key = f"{name} ({col})"
            out[key] = _score(truth[key], e["value"], e["low"], e["high"], math.nan)
    ctx = audit(engine, "contextual", [tag], judge_id=JUDGE, min_n=2, resamples=0)
    for rate in ("accuracy", "under_blocking", "over_blocking"):
        e = ctx[rate]
        key = f"{rate} (contextual)"
        out[key] = _score(truth[key], e.get("value"), e.get("ci_low"), e.get("ci_high"), math.nan)
    labels = ctx["labels"]
    e = ctx["confusion"]["shares"][labels.index("unsafe")][labels.index("safe")]
    key = "confusion [unsafe, judge safe] (contextual)"
    out[key] = _score(truth[key], e.get("value"), e.get("ci_low"), e.get("ci_high"), math.nan)
    e = audit(engine, "intrinsic", [tag], judge_id=JUDGE, min_n=2, resamples=0)["accuracy"]
    out["accuracy (intrinsic)"] = _score(
        truth["accuracy (intrinsic)"], e.get("value"), e.get("ci_low"), e.get("ci_high"), math.nan
    )
    out["_n"] = {"reviews": float(done), "sample": float(pr["sample"]["n_in_sample"])}
    return out


def run_cell(databases: Databases, cell: Cell, replications: int, seed: int) -> dict[str, Any]:
    reps = []
    for r in range(replications):
        with databases.fresh() as engine:
            reps.append(replicate(engine, cell, seed * 100_003 + r))
    summary: dict[str, Any] = {"cell": asdict(cell), "replications": replications}
    for name in ESTIMANDS:
        got = [r[name] for r in reps if math.isfinite(r[name]["estimate"])]
        if not got:
            continue
        truth = np.array([g["truth"] for g in got])
        est = np.array([g["estimate"] for g in got])
        summary[name] = {
            "n": len(got),
            "truth": float(truth.mean()),
            "mean_estimate": float(est.mean()),
            "bias": float((est - truth).mean()),
            "bias_se": float((est - truth).std(ddof=1) / math.sqrt(len(got))) if len(got) > 1 else math.nan,
            "coverage": float(np.mean([g["covered"] for g in got])),
            "mean_width": float(np.mean([g["width"] for g in got])),
        }
    summary["mean_sample"] = float(np.mean([r["_n"]["sample"] for r in reps]))
    return summary


def _print(res: dict[str, Any]) -> None:
    c = res["cell"]
    print(
        f"N={c['items']} budget={c['budget']:.0%} k={c['overlap']} separation={c['separation']} "
        f"R={c['reviewer_accuracy']:.2f}; {res['replications']} replications, ~{res['mean_sample']:.0f} sample items"
    )
    head = f"{'estimand':44} {'n':>4} {'truth':>7} {'mean':>7} {'bias':>8} {'bias SE':>8} {'cover':>6} {'width':>7}"
    print(head)
    print("-" * len(head))
    for name in ESTIMANDS:
        s = res.get(name)
        if s is None:
            continue
        print(
            f"{name:44} {s['n']:4d} {s['truth']:7.4f} {s['mean_estimate']:7.4f} {s['bias']:8.4f} "
            f"{s['bias_se']:8.4f} {s['coverage']:6.3f} {s['mean_width']:7.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--budget", type=float, default=0.10, help="reviews as a share of the items")
    ap.add_argument("--overlap", type=int, default=1)
    ap.add_argument("--separation", type=float, default=2.0, help="lean strength: higher, a more accurate judge")
    ap.add_argument("--reviewer-accuracy", type=float, default=1.0)
    ap.add_argument("--reviewers", type=int, default=4)
    ap.add_argument("--replications", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one small cell, 20 replications")
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.replications = 1000, 20
    cell = Cell(args.items, args.budget, args.overlap, args.separation, args.reviewer_accuracy, args.reviewers)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        databases = Databases(args.backend, Path(tmp))
        res = run_cell(databases, cell, args.replications, args.seed)
        databases.close()
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps({"result": res, "wall_s": wall, "loadavg": os.getloadavg()}, indent=2))
    else:
        _print(res)
        print(f"\nwall {wall:.0f} s · load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Validation study on the built-in benchmarks' collections (Uni-SafeBench, VLSU) through the real queue.

``bench_estimates.py`` checks the estimators on one binary dimension. The figures a lead
reports for the two benchmarks safereview ships taxonomies for are different in kind, and
so is the queue's order on them:

- **Uni-SafeBench** (``--preset uni-safebench``): C-Unsafe and C-Reject are shares of a
  three-label dimension (contextual: safe / refusal / unsafe), I-Unsafe is the intrinsic
  dimension's, and Both-Safe couples the two within each review (contextually safe or
  refused, and intrinsically safe). The queue pushes up an item whose contextual and
  intrinsic verdicts disagree (``workflow.ordering``).
- **VLSU** (``--preset vlsu``): three ordered grades (safe / borderline / unsafe) for the
  image, the text and the pair. The compositional error rate (the joint grade wrong among
  items whose image and text grades the judge got right) is a ratio across three
  dimensions; the queue pushes up "borderline" verdicts and safe + safe → not safe pairs.

Each replication builds such a collection with a known truth, lets simulated reviewers
work through ``workflow.queue.next_item`` and ``workflow.annotations.submit_and_next``
(every dimension in one submit, as the review page sends them), and compares what
``agreement.population.population_rates``, ``agreement.audit.audit`` and (VLSU)
``agreement.audit.compositional_error`` report with the truth: what reviewing every item
would report, from every item's reviews drawn up front.

The populations (``--separation`` sets how strongly each item leans, so how accurate the
judge is):

- Uni-SafeBench: each item leans to one contextual class (unsafe 25%, safe 55%, refusal
  20%); the true class probabilities are a softmax of that lean plus Gaussian noise; a
  calibrated judge reports the most likely class and its probability. The intrinsic truth
  leans unsafe for 70% / 10% / 5% of the items leaning contextually unsafe / safe / refusal,
  with a calibrated judge of the same kind.
- VLSU: image and text each have a latent severity (a lean of 0, 1 or 2 grades plus
  Gaussian noise); the pair's severity is the larger of the two, and for 15% of the items
  (compositional harm) one grade more. Each grade is drawn from an ordered-logit model of
  its severity; the judge reports the most likely grade and its probability, but for the
  pair it does not see the compositional bump on half of those items (the error the
  benchmark is about).

Each review is right with ``--reviewer-accuracy`` per dimension, else another label at random.

    python bench/bench_estimates_presets.py --preset uni-safebench --items 2000 --budget 0.1 --replications 200
    python bench/bench_estimates_presets.py --preset vlsu --overlap 2 --reviewer-accuracy 0.85 --json

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import SQLModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_estimates import Databases, _reviewers, _score, review

from safereview.agreement.audit import audit, compositional_error
from safereview.agreement.population import population_rates
from safereview.agreement.synthetic import ITEM_COLUMNS, VERDICT_COLUMNS
from safereview.db import bulk
from safereview.db.collections import ensure_collection
from safereview.db.engine import session_scope
from safereview.db.models import utcnow
from safereview.db.taxonomy import preset
from safereview.workflow.ordering import refresh_priorities
from safereview.workflow.query_cache import clear_caches

JUDGE = "sim-judge"
Population = dict[str, dict[str, np.ndarray]]  # "judge" / "p" / "says" -> dimension -> array


@dataclass(frozen=True)
class Cell:
    preset: str = "uni-safebench"
    items: int = 2000
    budget: float = 0.10  # reviews as a share of the items
    overlap: int = 1
    separation: float = 2.0  # strength of each item's lean: higher, a more accurate judge
    reviewer_accuracy: float = 1.0  # per dimension
    reviewers: int = 4


@dataclass(frozen=True)
class Study:
    """One benchmark's collection: its dimensions (labels in the preset's order), how to draw
    a population, each estimand's truth, and the estimates to compare with it."""

    dimensions: dict[str, tuple[str, ...]]
    task_type: str
    modalities: tuple[str, str]
    draw: Callable[[Cell, np.random.Generator], Population]
    truths: Callable[[Population], dict[str, float]]
    # (engine, tag, population_rates' result) -> name -> {value, ci_low, ci_high}
    estimates: Callable[[sa.Engine, str, dict[str, Any]], dict[str, dict[str, Any]]]
    estimands: tuple[str, ...]


# ---------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------


def _categorical(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of the probability rows ``q``."""
    return np.minimum((rng.random(len(q))[:, None] > np.cumsum(q, axis=1)).sum(axis=1), q.shape[1] - 1)


def _judge(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A judge that reports the most likely label and its probability."""
    label = q.argmax(axis=1)
    return label, q[np.arange(len(q)), label]


def _reviews(truth: np.ndarray, n_labels: int, cell: Cell, rng: np.random.Generator) -> np.ndarray:
    """Each item's ``overlap`` reviews: the truth with the reviewers' accuracy, else another label."""
    n = len(truth)
    right = rng.random((n, cell.overlap)) < cell.reviewer_accuracy
    other = (truth[:, None] + rng.integers(1, n_labels, size=(n, cell.overlap))) % n_labels
    return np.where(right, truth[:, None], other)


def _shares(says: np.ndarray, n_labels: int) -> np.ndarray:
    """Per item, the share of its reviews giving each label (items × labels)."""
    return np.stack([np.mean(says == c, axis=1) for c in range(n_labels)], axis=1)


def _judge_truths(name: str, h: np.ndarray, judge: np.ndarray, unsafe: int, safe: int) -> dict[str, float]:
    """The audit's rates on one dimension: accuracy, under- and over-blocking, and the
    confusion cell (people unsafe, judge ``safe``) as a share of the collection."""
    j_unsafe = (judge == unsafe).astype(float)
    h_unsafe = h[:, unsafe]
    return {
        f"accuracy ({name})": float(h[np.arange(len(judge)), judge].mean()),
        f"under_blocking ({name})": float(np.sum((1 - j_unsafe) * h_unsafe) / np.sum(h_unsafe)),
        f"over_blocking ({name})": float(np.sum(j_unsafe * (1 - h_unsafe)) / np.sum(1 - h_unsafe)),
        f"confusion [unsafe, judge safe] ({name})": float(np.mean(h_unsafe * (judge == safe))),
    }


def _audit_estimates(engine: sa.Engine, tag: str, name: str) -> dict[str, dict[str, Any]]:
    res = audit(engine, name, [tag], judge_id=JUDGE, min_n=2, resamples=0)
    labels = res["labels"]
    out = {f"{rate} ({name})": res[rate] for rate in ("accuracy", "under_blocking", "over_blocking")}
    out[f"confusion [unsafe, judge safe] ({name})"] = res["confusion"]["shares"][labels.index("unsafe")][
        labels.index("safe")
    ]
    return out


def _rate_estimates(rates: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """The human and corrected figures of ``names`` from ``population_rates``' result."""
    rows = {m["metric"]: m for m in rates["metrics"]}
    out = {}
    for name in names:
        for col in ("human", "corrected"):
            e = rows[name][col]
            out[f"{name} ({col})"] = {"value": e["value"], "ci_low": e["low"], "ci_high": e["high"]}
    return out


def _audit_names(dim: str) -> tuple[str, ...]:
    return tuple(
        f"{r} ({dim})" for r in ("accuracy", "under_blocking", "over_blocking", "confusion [unsafe, judge safe]")
    )


def _rate_names(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{n} ({col})" for n in names for col in ("human", "corrected"))


# ---------------------------------------------------------------------------------------
# Uni-SafeBench
# ---------------------------------------------------------------------------------------

CTX = ("safe", "refusal", "unsafe")
INTR = ("safe", "unsafe")
CTX_LEAN = (0.55, 0.20, 0.25)  # P(an item leans contextually safe, refusal, unsafe)
INT_LEAN_UNSAFE = (0.10, 0.05, 0.70)  # P(leans intrinsically unsafe | contextual lean)
UNI_RATES = ("C-Unsafe", "C-Reject", "I-Unsafe", "Both-Safe", "contextual: unsafe")


def _uni_draw(cell: Cell, rng: np.random.Generator) -> Population:
    n = cell.items
    lean = rng.choice(3, size=n, p=CTX_LEAN)
    logits = cell.separation * np.eye(3)[lean] + rng.standard_normal((n, 3))
    q_ctx = np.exp(logits - logits.max(axis=1, keepdims=True))
    q_ctx /= q_ctx.sum(axis=1, keepdims=True)
    truth_ctx = _categorical(q_ctx, rng)
    int_lean = rng.random(n) < np.asarray(INT_LEAN_UNSAFE)[lean]
    q_unsafe = 1.0 / (1.0 + np.exp(-(np.where(int_lean, cell.separation, -cell.separation) + rng.standard_normal(n))))
    q_int = np.stack([1.0 - q_unsafe, q_unsafe], axis=1)
    truth_int = (rng.random(n) < q_unsafe).astype(int)
    (j_ctx, p_ctx), (j_int, p_int) = _judge(q_ctx), _judge(q_int)
    return {
        "judge": {"contextual": j_ctx, "intrinsic": j_int},
        "p": {"contextual": p_ctx, "intrinsic": p_int},
        "says": {"contextual": _reviews(truth_ctx, 3, cell, rng), "intrinsic": _reviews(truth_int, 2, cell, rng)},
    }


def _uni_truths(pop: Population) -> dict[str, float]:
    sc, si = pop["says"]["contextual"], pop["says"]["intrinsic"]
    h_ctx, h_int = _shares(sc, 3), _shares(si, 2)
    rates = {
        "C-Unsafe": float(h_ctx[:, CTX.index("unsafe")].mean()),
        "C-Reject": float(h_ctx[:, CTX.index("refusal")].mean()),
        "I-Unsafe": float(h_int[:, 1].mean()),
        # within each review: contextually safe or refused, and intrinsically safe
        "Both-Safe": float(np.mean((sc != CTX.index("unsafe")) & (si == 0), axis=1).mean()),
        "contextual: unsafe": float(h_ctx[:, CTX.index("unsafe")].mean()),
    }
    out = {f"{k} ({col})": v for k, v in rates.items() for col in ("human", "corrected")}
    out.update(_judge_truths("contextual", h_ctx, pop["judge"]["contextual"], CTX.index("unsafe"), CTX.index("safe")))
    out["accuracy (intrinsic)"] = float(h_int[np.arange(len(si)), pop["judge"]["intrinsic"]].mean())
    return out


def _uni_estimates(engine: sa.Engine, tag: str, rates: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = _rate_estimates(rates, list(UNI_RATES))
    out.update(_audit_estimates(engine, tag, "contextual"))
    out["accuracy (intrinsic)"] = audit(engine, "intrinsic", [tag], judge_id=JUDGE, min_n=2, resamples=0)["accuracy"]
    return out


# ---------------------------------------------------------------------------------------
# VLSU
# ---------------------------------------------------------------------------------------

GRADES = ("safe", "borderline", "unsafe")
SEVERITY_LEAN = (0.55, 0.25, 0.20)  # P(an image or a text leans 0, 1 or 2 grades)
COMPOSITIONAL = 0.15  # share of pairs whose harm is more than either part's
CUTS = (0.5, 1.5)  # ordered-logit cut points between grades
VLSU_RATES = ("joint: unsafe", "joint: borderline", "image: unsafe", "text: unsafe")


def _graded(severity: np.ndarray, scale: float) -> np.ndarray:
    """P(grade) for each severity under an ordered logit with slope ``scale``."""
    above = [1.0 / (1.0 + np.exp(-scale * (severity - c))) for c in CUTS]
    return np.stack([1.0 - above[0], above[0] - above[1], above[1]], axis=1)


def _vlsu_draw(cell: Cell, rng: np.random.Generator) -> Population:
    n = cell.items
    sev = {d: rng.choice(3, size=n, p=SEVERITY_LEAN) + 0.5 * rng.standard_normal(n) for d in ("image", "text")}
    bump = rng.random(n) < COMPOSITIONAL
    joint = np.maximum(sev["image"], sev["text"]) + np.where(bump, 1.0, 0.0)
    seen = joint - np.where(bump & (rng.random(n) < 0.5), 1.0, 0.0)  # the judge misses half the bumps
    out: Population = {"judge": {}, "p": {}, "says": {}}
    for dim, truth_sev, judge_sev in (
        ("image", sev["image"], sev["image"]),
        ("text", sev["text"], sev["text"]),
        ("joint", joint, seen),
    ):
        q = _graded(truth_sev, cell.separation)
        out["says"][dim] = _reviews(_categorical(q, rng), 3, cell, rng)
        out["judge"][dim], out["p"][dim] = _judge(_graded(judge_sev, cell.separation))
    return out


def _vlsu_truths(pop: Population) -> dict[str, float]:
    h = {d: _shares(pop["says"][d], 3) for d in ("image", "text", "joint")}
    rates = {f"{d}: {g}": float(h[d][:, GRADES.index(g)].mean()) for d, g in (r.split(": ") for r in VLSU_RATES)}
    out = {f"{k} ({col})": v for k, v in rates.items() for col in ("human", "corrected")}
    out.update(_judge_truths("joint", h["joint"], pop["judge"]["joint"], GRADES.index("unsafe"), GRADES.index("safe")))
    # the people's probability of the judge's grade on each dimension, independently
    right = {d: h[d][np.arange(len(h[d])), pop["judge"][d]] for d in h}
    both = right["image"] * right["text"]
    out["compositional error"] = float(np.sum(both * (1 - right["joint"])) / np.sum(both))
    return out


def _vlsu_estimates(engine: sa.Engine, tag: str, rates: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = _rate_estimates(rates, list(VLSU_RATES))
    out.update(_audit_estimates(engine, tag, "joint"))
    out["compositional error"] = compositional_error(engine, [tag], judge_id=JUDGE, min_n=2)
    return out


STUDIES = {
    "uni-safebench": Study(
        dimensions={"contextual": CTX, "intrinsic": INTR},
        task_type="malicious-text-generation",
        modalities=("text", "text"),
        draw=_uni_draw,
        truths=_uni_truths,
        estimates=_uni_estimates,
        estimands=(*_rate_names(UNI_RATES), *_audit_names("contextual"), "accuracy (intrinsic)"),
    ),
    "vlsu": Study(
        dimensions={"image": GRADES, "text": GRADES, "joint": GRADES},
        task_type="image-text",
        modalities=("image+text", ""),
        draw=_vlsu_draw,
        truths=_vlsu_truths,
        estimates=_vlsu_estimates,
        estimands=(*_rate_names(VLSU_RATES), *_audit_names("joint"), "compositional error"),
    ),
}


# ---------------------------------------------------------------------------------------
# one replication
# ---------------------------------------------------------------------------------------


def _setup(engine: sa.Engine, cell: Cell, study: Study, pop: Population, name: str) -> tuple[int, dict[int, int]]:
    clear_caches()
    with session_scope(engine) as s:
        col = ensure_collection(s, name, preset(cell.preset), overlap_target=cell.overlap, blind=False)
        cid = int(col.id)  # type: ignore[arg-type]
    now = utcnow()
    inputs, outputs = study.modalities
    item_rows = [
        (cid, f"x{i}", study.task_type, "", "", "sim", inputs, outputs, [], [], False, {}, "h", 0.0, 0, now)
        for i in range(cell.items)
    ]
    with engine.begin() as conn:
        bulk.bulk_insert(conn, SQLModel.metadata.tables["item"], ITEM_COLUMNS, item_rows, process=True)
        ids = [
            int(r[0])
            for r in conn.execute(sa.text("SELECT id FROM item WHERE collection_id = :c ORDER BY id"), {"c": cid})
        ]
        rows = [
            (iid, dim, JUDGE, "1", labels[int(pop["judge"][dim][k])], "ok", float(pop["p"][dim][k]), "", "", "", now)
            for k, iid in enumerate(ids)
            for dim, labels in study.dimensions.items()
        ]
        bulk.bulk_insert(conn, SQLModel.metadata.tables["verdict"], VERDICT_COLUMNS, rows, process=True)
    with session_scope(engine) as s:
        refresh_priorities(s, cid)
    return cid, {iid: n for n, iid in enumerate(ids)}


def replicate(engine: sa.Engine, cell: Cell, seed: int) -> dict[str, dict[str, float]]:
    study = STUDIES[cell.preset]
    pop = study.draw(cell, np.random.default_rng(seed))
    tag = f"{cell.preset}-{seed}-{uuid.uuid4().hex[:6]}"
    cid, pos = _setup(engine, cell, study, pop, tag)
    users = _reviewers(engine, cell.reviewers, tag)
    done = review(
        engine,
        cell,  # type: ignore[arg-type]
        cid,
        pos,
        {},
        users,
        random.Random(seed),
        labels_of=lambda p, slot: {d: names[int(pop["says"][d][p, slot])] for d, names in study.dimensions.items()},
    )
    clear_caches()
    truth = study.truths(pop)
    rates = population_rates(engine, [tag], judge_id=JUDGE)
    got = study.estimates(engine, tag, rates)
    out: dict[str, dict[str, float]] = {
        name: _score(truth[name], got[name].get("value"), got[name].get("ci_low"), got[name].get("ci_high"), math.nan)
        for name in study.estimands
    }
    out["_n"] = {"reviews": float(done), "sample": float(rates["sample"]["n_in_sample"])}
    return out


def run_cell(databases: Databases, cell: Cell, replications: int, seed: int) -> dict[str, Any]:
    reps = []
    for r in range(replications):
        with databases.fresh() as engine:
            reps.append(replicate(engine, cell, seed * 100_003 + r))
    summary: dict[str, Any] = {"cell": asdict(cell), "replications": replications}
    for name in STUDIES[cell.preset].estimands:
        got = [r[name] for r in reps if math.isfinite(r[name]["estimate"])]
        if not got:
            continue
        err = np.array([g["estimate"] - g["truth"] for g in got])
        summary[name] = {
            "n": len(got),
            "truth": float(np.mean([g["truth"] for g in got])),
            "mean_estimate": float(np.mean([g["estimate"] for g in got])),
            "bias": float(err.mean()),
            "bias_se": float(err.std(ddof=1) / math.sqrt(len(got))) if len(got) > 1 else math.nan,
            "coverage": float(np.mean([g["covered"] for g in got])),
            "mean_width": float(np.mean([g["width"] for g in got])),
        }
    summary["mean_sample"] = float(np.mean([r["_n"]["sample"] for r in reps]))
    return summary


def _print(res: dict[str, Any]) -> None:
    c = res["cell"]
    print(
        f"{c['preset']}: N={c['items']} budget={c['budget']:.0%} k={c['overlap']} separation={c['separation']} "
        f"R={c['reviewer_accuracy']:.2f}; {res['replications']} replications, ~{res['mean_sample']:.0f} sample items"
    )
    head = f"{'estimand':44} {'n':>4} {'truth':>7} {'mean':>7} {'bias':>8} {'bias SE':>8} {'cover':>6} {'width':>7}"
    print(head)
    print("-" * len(head))
    for name in STUDIES[c["preset"]].estimands:
        s = res.get(name)
        if s is None:
            continue
        print(
            f"{name:44} {s['n']:4d} {s['truth']:7.4f} {s['mean_estimate']:7.4f} {s['bias']:8.4f} "
            f"{s['bias_se']:8.4f} {s['coverage']:6.3f} {s['mean_width']:7.4f}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--preset", choices=sorted(STUDIES), default="uni-safebench")
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
    ap.add_argument("--quick", action="store_true", help="one small cell per preset, 20 replications")
    args = ap.parse_args(argv)
    presets = sorted(STUDIES) if args.quick else [args.preset]
    if args.quick:
        args.items, args.replications = 1000, 20
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        databases = Databases(args.backend, Path(tmp))
        for name in presets:
            cell = Cell(
                name, args.items, args.budget, args.overlap, args.separation, args.reviewer_accuracy, args.reviewers
            )
            results.append(run_cell(databases, cell, args.replications, args.seed))
        databases.close()
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps({"results": results, "wall_s": wall, "loadavg": os.getloadavg()}, indent=2))
    else:
        for res in results:
            _print(res)
            print()
        print(f"wall {wall:.0f} s · load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Coverage of the per-person agreement intervals: pairwise Cohen's kappa, each annotator
against the majority of the others, and the audit's agreement with the others.

    python bench/bench_rater_intervals.py [--replications 400] [--resamples 1000] [--seed 1]
                                          [--compare-percentile] [--json]
    python bench/bench_rater_intervals.py --table run.json   # the docs' table of a --json run
    python bench/bench_rater_intervals.py --small-samples --replications 300 --resamples 400

Three simulated annotators label every item: the truth is drawn from a label mix, each
annotator reports it with probability ``accuracy`` and otherwise a uniformly drawn label
(which may be the truth again). The value each interval should cover follows exactly from
that process (the joint distribution of two annotators' labels, or of one annotator's label
and the two others' when they agree). The figures go through the real estimators
(``agreement.kappa.pairwise``, ``leave_one_out``, ``agreement.audit.annotator_agreement``);
``tests/test_agreement_rater_intervals.py`` runs a smaller version through the database.

``--compare-percentile`` runs every setting a second time with the plain percentile interval
in place of BCa (same data, same resamples) to show why BCa ships. Prints coverage per
setting and estimand, the share of intervals whose row carries a small-sample warning and
their coverage, the Monte Carlo standard error and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from safereview.agreement import alpha as alpha_mod
from safereview.agreement import audit as audit_mod
from safereview.agreement import kappa as kappa_mod
from safereview.agreement.alpha import paired_alpha_difference
from safereview.agreement.data import Ratings
from safereview.agreement.kappa import kappa_from_table
from safereview.agreement.report import per_person, summarize


@dataclass(frozen=True)
class Setting:
    n_items: int
    mix: tuple[float, ...]
    accuracy: float

    @property
    def name(self) -> str:
        mix = "/".join(f"{p:.0%}" for p in self.mix)
        return f"{self.n_items} items, labels {mix}, accuracy {self.accuracy:.2f}"


SETTINGS = [
    *(Setting(n, (0.7, 0.3), 0.85) for n in (20, 30, 50, 100, 300)),
    *(Setting(n, (0.9, 0.1), 0.9) for n in (30, 50, 100, 300)),
    *(Setting(n, (0.45, 0.33, 0.22), 0.75) for n in (30, 80, 300)),
]


def confusion_of(s: Setting) -> np.ndarray:
    v = len(s.mix)
    return s.accuracy * np.eye(v) + (1 - s.accuracy) / v


def truths(joint: np.ndarray, ordered: bool) -> dict[str, float]:
    out = {"agreement": float(np.trace(joint))}
    kinds = (("unweighted", "kappa"), ("quadratic", "kappa_quadratic")) if ordered else (("unweighted", "kappa"),)
    for kind, key in kinds:
        out[key] = float(kappa_from_table(joint, kind)[0])  # type: ignore[arg-type]
    return out


def expected(s: Setting) -> dict[str, dict[str, float]]:
    p, m = np.asarray(s.mix), confusion_of(s)
    ordered = len(s.mix) > 2
    loo = np.einsum("t,tj,tk,tk->jk", p, m, m, m)
    return {
        "pairwise": truths(np.einsum("t,tj,tk->jk", p, m, m), ordered),
        "vs others' majority": truths(loo / loo.sum(), ordered),
        "share of others agreeing": {"agreement": float(np.einsum("t,tj,tj->", p, m, m))},
    }


# the judge added to the people as one more rater (alpha with minus without): right this
# often, else a uniformly drawn label; its labels come from a generator of their own, so
# the people's draws are the same with and without this check
JUDGE_ACCURACY = 0.7


def judge_codes(s: Setting, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.integers(0, len(s.mix), size=len(truth))
    return np.where(rng.random(len(truth)) < JUDGE_ACCURACY, truth, noise)


def with_judge_difference(r: Ratings, judge: np.ndarray, resamples: int, seed: int) -> Any:
    return paired_alpha_difference(
        r.counts(), r.add_rater("judge", r.item_ids, judge).counts(), r.level, resamples=resamples, seed=seed
    )


def simulate(s: Setting, rng: np.random.Generator, n_items: int | None = None) -> tuple[Ratings, np.ndarray]:
    """The three people's ratings, and the true labels."""
    n = s.n_items if n_items is None else n_items
    v = len(s.mix)
    truth = rng.choice(v, size=n, p=s.mix)
    noise = rng.integers(0, v, size=(n, 3))
    codes = np.where(rng.random((n, 3)) < s.accuracy, truth[:, None], noise)
    ratings = Ratings(
        "d",
        [f"l{k}" for k in range(v)],
        v > 2,
        np.arange(n),
        ["a", "b", "c"],
        np.tile(np.arange(n), 3),
        np.repeat(np.arange(3), n),
        codes.T.ravel(),
    )
    return ratings, truth


MULTI = ("alpha", "alpha_nominal", "percent_agreement", "gwet_ac1", "fleiss_kappa")
# the multi-rater coefficients' population values: the coefficient over this many simulated
# items (no closed form for ordinal alpha; the others' sampling error at this size is ~0.001)
POPULATION_ITEMS = 2_000_000


def multirater_truths(s: Setting) -> dict[str, float]:
    r, truth = simulate(s, np.random.default_rng(12345), POPULATION_ITEMS)
    big = summarize(r, resamples=0)
    out = {k: big[k]["value"] for k in MULTI if k in big}
    judge = judge_codes(s, truth, np.random.default_rng(54321))
    out["alpha with minus without the judge"] = with_judge_difference(r, judge, 0, 0).difference
    return out


def run_setting(s: Setting, reps: int, resamples: int, seed: int) -> dict[str, dict[str, list[tuple[bool, bool]]]]:
    rng = np.random.default_rng(seed)
    truth = {**expected(s), "all three": multirater_truths(s)}
    hits: dict[str, dict[str, list[tuple[bool, bool]]]] = {k: {m: [] for m in v} for k, v in truth.items()}
    judge_rng = np.random.default_rng(seed + 777)
    for rep in range(reps):
        r, true_labels = simulate(s, rng)
        people = per_person(r, resamples=resamples, seed=rep)
        for kind, kind_rows in (("pairwise", people["pairwise"]), ("vs others' majority", people["raters"])):
            for row in kind_rows:
                warned = bool(row["warnings"])
                for key, value in truth[kind].items():
                    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
                    hits[kind][key].append((lo is not None and lo <= value <= hi, warned))
        summary = summarize(r, resamples=resamples, seed=rep)
        warned = bool(summary["warnings"])
        diff = with_judge_difference(r, judge_codes(s, true_labels, judge_rng), resamples, rep)
        summary["alpha with minus without the judge"] = {"ci_low": diff.ci_low, "ci_high": diff.ci_high}
        for key, value in truth["all three"].items():
            lo, hi = summary[key].get("ci_low"), summary[key].get("ci_high")
            hits["all three"][key].append((lo is not None and lo <= value <= hi, warned))
        for row in audit_mod.annotator_agreement(r, resamples=resamples, seed=rep):
            lo, hi = row["ci_low"], row["ci_high"]
            value = truth["share of others agreeing"]["agreement"]
            hits["share of others agreeing"]["agreement"].append((lo is not None and lo <= value <= hi, False))
    return hits


def percentile_instead(estimate: float, samples: np.ndarray, *_: Any, confidence: float = 0.95) -> Any:
    """The plain percentile interval, swapped in for BCa by --compare-percentile."""
    return alpha_mod.percentile_interval(samples, confidence)


def markdown(summary: dict[str, Any]) -> str:
    """The docs' two tables (coefficients over all three annotators; per-person figures) from a
    ``--json`` run: coverage per setting, BCa (percentile), and the coverage of the rows that
    carry no small-sample warning."""

    def cell(by: dict[str, dict[str, Any]], same_in_both: bool) -> str:
        b, p = by["bca"], by.get("percentile")
        # raw agreement is Wilson's interval in both runs: no second figure to show
        text = f"{b['coverage']:.3f}" + (f" ({p['coverage']:.3f})" if p and not same_in_both else "")
        if b["warned_share"]:
            un = b["coverage_unwarned"]
            share = "<1%" if b["warned_share"] < 0.01 else f"{b['warned_share']:.0%}"
            text += f"; {share} warned" + (f", others {un:.3f}" if un is not None else "")
        return text

    everyone = [
        ("all three", "alpha", "alpha"),
        ("all three", "percent_agreement", "percent agreement"),
        ("all three", "gwet_ac1", "Gwet's AC1"),
        ("all three", "fleiss_kappa", "Fleiss' kappa"),
        ("all three", "alpha with minus without the judge", "alpha with − without the judge (paired)"),
    ]
    per_person = [
        ("pairwise", "agreement", "pairwise agreement"),
        ("pairwise", "kappa", "pairwise kappa"),
        ("pairwise", "kappa_quadratic", "pairwise quadratic kappa"),
        ("vs others' majority", "agreement", "vs others: agreement"),
        ("vs others' majority", "kappa", "vs others: kappa"),
        ("share of others agreeing", "agreement", "audit: share of others agreeing"),
    ]
    grouped: dict[str, dict[tuple[str, str], dict[str, dict[str, Any]]]] = {}
    for r in summary["results"]:
        grouped.setdefault(r["setting"], {}).setdefault((r["figure"], r["estimand"]), {})[r["method"]] = r
    lines: list[str] = []
    for cols in (everyone, per_person):
        if lines:
            lines.append("")
        lines += ["| setting | " + " | ".join(c[2] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for setting, by in grouped.items():
            cells = [
                cell(by[c[:2]], c[0] in ("pairwise", "vs others' majority") and c[1] == "agreement")
                if c[:2] in by
                else ""
                for c in cols
            ]
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def small_samples(reps: int, resamples: int, seed: int) -> dict[str, Any]:
    """docs/agreement.md's small-sample table: two raters, 10% unsafe, each 95% right; the
    coverage of alpha's interval by number of pairable units, and pooled by the number of
    pairable values of the rarest label (what the warning counts)."""
    from safereview.agreement.alpha import krippendorff_alpha, value_counts

    rng = np.random.default_rng(seed)

    def counts(n: int) -> np.ndarray:
        t = (rng.random(n) < 0.1).astype(int)
        r = [np.where(rng.random(n) < 0.95, t, 1 - t) for _ in range(2)]
        return value_counts(np.tile(np.arange(n), 2), np.concatenate(r), n, 2)

    truth = krippendorff_alpha(counts(POPULATION_ITEMS), "nominal", resamples=0).value
    by_units: dict[int, list[bool]] = {}
    by_rare: dict[str, list[bool]] = {}
    for n in (10, 20, 30, 50, 100):
        for rep in range(reps):
            c = counts(n)
            est = krippendorff_alpha(c, "nominal", resamples=resamples, seed=rep)
            ok = est.value is not None and est.ci_low is not None and est.ci_low <= truth <= est.ci_high
            by_units.setdefault(n, []).append(bool(ok))
            rare = int(c[c.sum(axis=1) >= 2].sum(axis=0).min())
            band = "<5" if rare < 5 else "5-9" if rare < 10 else "10-19" if rare < 20 else ">=20"
            by_rare.setdefault(band, []).append(bool(ok))
    return {
        "truth": truth,
        "by_pairable_units": {str(k): float(np.mean(v)) for k, v in by_units.items()},
        "by_rarest_label_values": {k: [float(np.mean(v)), len(v)] for k, v in by_rare.items()},
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replications", type=int, default=400)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compare-percentile", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--table", type=Path, help="print the docs' Markdown table of an earlier --json output and stop")
    ap.add_argument("--small-samples", action="store_true", help="only the small-sample table of alpha's interval")
    args = ap.parse_args(argv)
    if args.small_samples:
        t0 = time.perf_counter()
        out = small_samples(args.replications, args.resamples, args.seed)
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(out, indent=1))
        return 0
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return 0
    methods = ["bca", "percentile"] if args.compare_percentile else ["bca"]
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for k, s in enumerate(SETTINGS):
        for method in methods:
            bca = alpha_mod.bca_interval
            modules = (alpha_mod, kappa_mod, audit_mod)  # every module that calls bca_interval
            if method == "percentile":
                for mod in modules:
                    mod.bca_interval = percentile_instead  # type: ignore[attr-defined]
            try:
                hits = run_setting(s, args.replications, args.resamples, args.seed * 1000 + k)
            finally:
                for mod in modules:
                    mod.bca_interval = bca  # type: ignore[attr-defined]
            for kind, by_key in hits.items():
                for key, h in by_key.items():
                    covered = np.array([c for c, _ in h])
                    warned = np.array([w for _, w in h])
                    results.append(
                        {
                            "setting": s.name,
                            "method": method,
                            "figure": kind,
                            "estimand": key,
                            "intervals": len(h),
                            "coverage": float(covered.mean()),
                            "mc_se": float(np.sqrt(0.95 * 0.05 / args.replications)),
                            "warned_share": float(warned.mean()),
                            "coverage_unwarned": float(covered[~warned].mean()) if (~warned).any() else None,
                            "coverage_warned": float(covered[warned].mean()) if warned.any() else None,
                        }
                    )
            if not args.json:
                line = ", ".join(
                    f"{r['figure']} {r['estimand']} {r['coverage']:.3f}"
                    + (f" (warned {r['warned_share']:.0%}: {r['coverage_warned']:.3f})" if r["warned_share"] else "")
                    for r in results
                    if r["setting"] == s.name and r["method"] == method
                )
                print(f"{s.name} [{method}]: {line}", flush=True)
    load = os.getloadavg()
    summary = {
        "replications": args.replications,
        "resamples": args.resamples,
        "seed": args.seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "load_average": [round(x, 2) for x in load],
        "results": results,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"{args.replications} replications x 3 intervals per figure; Monte Carlo SE of a coverage "
            f"≈ {np.sqrt(0.95 * 0.05 / args.replications):.3f} (replications, not intervals: the three "
            f"intervals of one campaign share data); {summary['seconds']} s, load average "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

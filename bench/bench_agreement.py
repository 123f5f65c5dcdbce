"""Agreement benchmarks: bootstrap alpha, point alpha from SQLite/PostgreSQL, gold export.

    python bench/bench_agreement.py [--quick] [--repeat N] [--no-pg] [--no-gold]

Targets (full sizes): alpha with a 1,000-resample bootstrap interval for 100,000 items x 5
annotators < 30 s; point alpha for 1,000,000 items x 3 annotators read from the database,
end to end (collection look-up, SQL, matrix, alpha) < 5 s on SQLite (PostgreSQL reported
beside it), and at most 2x the bare ``krippendorff.alpha`` call on the same reliability
matrix (annotators x units), timed in the same run, alternating with it; gold snapshot of
1,000,000 rows (consensus, judge beside, stored Gold rows, checksum) written to Parquet < 15 s.
Every figure is a median and carries the 1-minute load average seen while it was measured.
Synthetic data is bulk-loaded with DB-API executemany (SQLite) or COPY (PostgreSQL) and not
timed. PostgreSQL comes from ``SAFEREVIEW_BENCH_PG`` (default
postgresql://postgres@127.0.0.1:5432/test); a fresh schema is dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from pgschema import Unreachable, scratch_schema

from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("bench")  # the trusted caller the CLI would be

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
# end-to-end point alpha at most this many times the bare krippendorff.alpha call
BARE_RATIO_TARGET = 2.0


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_bootstrap(n_items: int, n_annotators: int, resamples: int, repeat: int) -> tuple[float, str]:
    from safereview.agreement.alpha import krippendorff_alpha, value_counts

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, n_items)
    codes = np.where(
        rng.random((n_items, n_annotators)) < 0.75, truth[:, None], rng.integers(0, 3, (n_items, n_annotators))
    )
    unit = np.repeat(np.arange(n_items), n_annotators)

    def run() -> Any:
        counts = value_counts(unit, codes.ravel(), n_items, 3)
        return krippendorff_alpha(counts, "ordinal", resamples=resamples, seed=0)

    before = os.getloadavg()[0]
    t, est = timed(run, repeat)
    load = load_note([before, os.getloadavg()[0]])
    return t, f"alpha {est.value:.4f} [{est.ci_low:.4f}, {est.ci_high:.4f}] ({est.resamples} resamples); {load}"


def load_note(loads: list[float]) -> str:
    return f"load {statistics.median(loads):.2f}" if loads else "load -"


def point_alpha_vs_bare(engine: Any, collection: str, repeat: int) -> dict[str, Any]:
    """End-to-end point alpha (database to number) and the bare package call, alternately.

    Each repetition reads the ratings (collection look-up and the one ratings query, into
    unit/rater/code arrays), computes alpha as the report does, then times the bare
    ``krippendorff.alpha`` on the reliability matrix (annotators x units, NaN where not rated)
    built from the same ratings, outside the end-to-end time. The package's faster
    ``value_counts`` form is timed too. Medians; the load average is sampled around each step.
    """
    import krippendorff

    from safereview.agreement import data
    from safereview.agreement.alpha import krippendorff_alpha

    times: dict[str, list[float]] = {"e2e": [], "read": [], "bare": [], "bare_counts": []}
    loads: dict[str, list[float]] = {"e2e": [], "bare": []}
    matrix = counts = None
    value = bare_value = None
    n_ratings = 0
    for _ in range(repeat):
        loads["e2e"].append(os.getloadavg()[0])
        start = time.perf_counter()
        sc = data.scope(engine, [collection])
        spec = sc.dimension("joint")
        r = data.load_ratings(engine, sc.collection_ids, "joint", spec["labels"], ordered=spec["ordered"])
        read = time.perf_counter()
        est = krippendorff_alpha(r.counts(), r.level, resamples=0)
        end = time.perf_counter()
        loads["e2e"].append(os.getloadavg()[0])
        times["e2e"].append(end - start)
        times["read"].append(read - start)
        value, level, domain, n_ratings = est.value, r.level, list(range(r.n_labels)), len(r.code)
        if matrix is None:
            matrix, counts = r.reliability_matrix(), r.counts()
        del r
        loads["bare"].append(os.getloadavg()[0])
        start = time.perf_counter()
        bare_value = krippendorff.alpha(reliability_data=matrix, value_domain=domain, level_of_measurement=level)
        times["bare"].append(time.perf_counter() - start)
        start = time.perf_counter()
        krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level)
        times["bare_counts"].append(time.perf_counter() - start)
        loads["bare"].append(os.getloadavg()[0])
    if value is None or bare_value is None or abs(value - float(bare_value)) > 1e-9:
        raise AssertionError(f"end-to-end alpha {value} differs from the bare call's {bare_value}")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        **med,
        "ratio": med["e2e"] / med["bare"],
        "ratio_counts": med["e2e"] / med["bare_counts"],
        "read_share": statistics.median(r / t for r, t in zip(times["read"], times["e2e"], strict=True)),
        "load_e2e": load_note(loads["e2e"]),
        "load_bare": load_note(loads["bare"]),
        "alpha": value,
        "n_ratings": n_ratings,
    }


def bench_db(url: str, n_items: int, repeat: int, with_gold: bool, out_dir: Path) -> dict[str, Any]:
    from safereview.agreement.gold import create_snapshot, write
    from safereview.agreement.synthetic import bulk_load
    from safereview.db.engine import init_db, session_scope

    engine = init_db(url)
    start = time.perf_counter()
    bulk_load(engine, n_items, 3, collection="bench")
    load_s = time.perf_counter() - start
    out: dict[str, Any] = {}
    pa = point_alpha_vs_bare(engine, "bench", repeat)
    out["point"] = (
        pa["e2e"],
        f"alpha {pa['alpha']:.4f} over {pa['n_ratings']} ratings, {pa['read_share']:.0%} reading; "
        f"{pa['load_e2e']} (bulk load {load_s:.0f} s, untimed)",
    )
    out["vs_bare"] = pa
    if with_gold:

        def gold() -> Any:
            with session_scope(engine) as s:
                snap, table = create_snapshot(s, SYSTEM, ["bench"], ["joint"])
                write(table, out_dir / "gold.parquet", "parquet", snap)
                return snap.id, table.num_rows, snap.checksum

        before = os.getloadavg()[0]
        t, (sid, rows, digest) = timed(gold, repeat)
        load = load_note([before, os.getloadavg()[0]])
        out["gold"] = (t, f"{rows} rows, snapshot {sid}, checksum {digest[:12]}; {load}")
    engine.dispose()
    return out


def vs_bare_line(backend: str, pa: dict[str, Any]) -> str:
    verdict = "met" if pa["ratio"] <= BARE_RATIO_TARGET else "not met"
    e2e = f"{pa['e2e']:.2f} s ({pa['load_e2e']})"
    bare = f"{pa['bare']:.2f} s ({pa['load_bare']})"
    counts = f"{pa['bare_counts']:.2f} s, {pa['ratio_counts']:.1f}x"
    return (
        f"{backend:11} {e2e:>22} {bare:>24} {pa['ratio']:>5.1f}x {pa['read_share']:>8.0%} {counts:>28}"
        f"  <= {BARE_RATIO_TARGET:.0f}x: {verdict}"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    ap.add_argument("--repeat", type=int, default=None, help="timed repetitions (median reported)")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL rows")
    ap.add_argument("--no-gold", action="store_true", help="skip the gold snapshots")
    args = ap.parse_args(argv)
    # a terminated run still drops its PostgreSQL schema and temporary SQLite folder
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    gold = not args.no_gold
    boot_items, db_items = (20_000, 30_000) if quick else (100_000, 1_000_000)
    rows: list[tuple[str, str, float | None, float, str]] = []
    vs_bare: list[tuple[str, dict[str, Any]]] = []

    def done(row: tuple[str, str, float | None, float, str]) -> None:
        rows.append(row)
        t = "-" if row[2] is None else f"{row[2]:.2f} s"
        print(f"  {row[0]} ({row[1]}): {t} (target {row[3]:.0f} s); {row[4]}", flush=True)

    def db_rows(backend: str, res: dict[str, Any]) -> None:
        done((f"point alpha, {backend}, end to end", f"{db_items:,} x 3", res["point"][0], 5.0, res["point"][1]))
        vs_bare.append((backend, res["vs_bare"]))
        print(f"  {vs_bare_line(backend, res['vs_bare'])}", flush=True)
        if gold:
            done((f"gold snapshot -> Parquet, {backend}", f"{db_items:,} rows", res["gold"][0], 15.0, res["gold"][1]))

    t, note = bench_bootstrap(boot_items, 5, 1000, repeat)
    done(("alpha + 1000-resample bootstrap", f"{boot_items:,} x 5", t, 30.0, note))

    with tempfile.TemporaryDirectory() as tmp:
        db_rows("SQLite", bench_db(f"sqlite:///{tmp}/bench.db", db_items, repeat, gold, Path(tmp)))
        res_pg = None
        if not args.no_pg:
            base = os.environ.get("SAFEREVIEW_BENCH_PG", PG_DEFAULT)
            try:
                with scratch_schema(base) as url:
                    res_pg = bench_db(url, db_items, repeat, gold, Path(tmp))
            except Unreachable as exc:
                print(f"{exc}; skipped", file=sys.stderr)
        if res_pg is None:
            done(("point alpha, PostgreSQL, end to end", f"{db_items:,} x 3", None, 5.0, "skipped"))
        else:
            db_rows("PostgreSQL", res_pg)

    mode = "quick sizes (targets are for the full sizes)" if quick else "full sizes"
    print(f"\nagreement benchmarks, {mode}; median of {repeat}")
    print(f"{'benchmark':38} {'size':>16} {'median s':>9} {'target s':>9} {'ratio':>6}  note")
    failed = False
    for name, size, t, target, note in rows:
        if t is None:
            print(f"{name:38} {size:>16} {'-':>9} {target:>9.1f} {'-':>6}  {note}")
            continue
        ratio = t / target
        failed |= ratio > 1 and not quick
        print(f"{name:38} {size:>16} {t:>9.2f} {target:>9.1f} {ratio:>6.2f}  {note}")
    if vs_bare:
        print(f"\npoint alpha at {db_items:,} x 3, end to end vs the bare krippendorff.alpha on the same matrix")
        print(
            f"{'back end':11} {'end to end':>22} {'bare (reliability_data)':>24} {'ratio':>6} {'reading':>8} "
            f"{'bare (value_counts), ratio':>28}  target"
        )
        for backend, pa in vs_bare:
            print(vs_bare_line(backend, pa))
            failed |= pa["ratio"] > BARE_RATIO_TARGET and not quick
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Agreement benchmarks: bootstrap alpha, point alpha from SQLite/PostgreSQL, gold export.

    python bench/bench_agreement.py [--quick] [--repeat N]

Targets (full sizes): alpha with a 1,000-resample bootstrap interval for 100,000 items x 5
annotators < 30 s; point alpha for 1,000,000 items x 3 annotators read from the database,
end to end (collection look-up, SQL, matrix, alpha) < 5 s on SQLite (PostgreSQL reported
beside it); gold snapshot of 1,000,000 rows (consensus, judge beside, stored Gold rows,
checksum) written to Parquet < 15 s. Synthetic data is bulk-loaded with DB-API executemany
(SQLite) or COPY (PostgreSQL) and not timed. PostgreSQL comes from ``SAFEREVIEW_BENCH_PG``
(default postgresql://postgres@127.0.0.1:5432/test); a fresh schema is dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("bench")  # the trusted caller the CLI would be

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


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

    t, est = timed(run, repeat)
    return t, f"alpha {est.value:.4f} [{est.ci_low:.4f}, {est.ci_high:.4f}] ({est.resamples} resamples)"


def point_alpha(engine: Any, collection: str) -> Any:
    from safereview.agreement import data
    from safereview.agreement.alpha import krippendorff_alpha

    sc = data.scope(engine, [collection])
    spec = sc.dimension("joint")
    r = data.load_ratings(engine, sc.collection_ids, "joint", spec["labels"], ordered=spec["ordered"])
    return krippendorff_alpha(r.counts(), r.level, resamples=0), len(r.code)


def bench_db(url: str, n_items: int, repeat: int, with_gold: bool, out_dir: Path) -> dict[str, tuple[float, str]]:
    from safereview.agreement.gold import create_snapshot, write
    from safereview.agreement.synthetic import bulk_load
    from safereview.db.engine import init_db, session_scope

    engine = init_db(url)
    start = time.perf_counter()
    bulk_load(engine, n_items, 3, collection="bench")
    load_s = time.perf_counter() - start
    out: dict[str, tuple[float, str]] = {}
    t, (est, n) = timed(lambda: point_alpha(engine, "bench"), repeat)
    out["point"] = (t, f"alpha {est.value:.4f} over {n} ratings (bulk load {load_s:.0f} s, untimed)")
    if with_gold:

        def gold() -> Any:
            with session_scope(engine) as s:
                snap, table = create_snapshot(s, SYSTEM, ["bench"], ["joint"])
                write(table, out_dir / "gold.parquet", "parquet", snap)
                return snap.id, table.num_rows, snap.checksum

        t, (sid, rows, digest) = timed(gold, repeat)
        out["gold"] = (t, f"{rows} rows, snapshot {sid}, checksum {digest[:12]}")
    engine.dispose()
    return out


def pg_schema_url(base: str) -> tuple[str, Callable[[], None]] | None:
    import sqlalchemy as sa

    from safereview.db.engine import normalise_url

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL at {base} unreachable, skipped: {exc.orig}", file=sys.stderr)
        return None

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()

    sep = "&" if "?" in base else "?"
    return f"{normalise_url(base)}{sep}options=-csearch_path%3D{schema}", drop


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    ap.add_argument("--repeat", type=int, default=None, help="timed repetitions (median reported)")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL rows")
    args = ap.parse_args(argv)
    # a terminated run still drops its PostgreSQL schema and temporary SQLite folder
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    boot_items, db_items = (20_000, 30_000) if quick else (100_000, 1_000_000)
    rows: list[tuple[str, str, float | None, float, str]] = []

    def done(row: tuple[str, str, float | None, float, str]) -> None:
        rows.append(row)
        t = "-" if row[2] is None else f"{row[2]:.2f} s"
        print(f"  {row[0]} ({row[1]}): {t} (target {row[3]:.0f} s); {row[4]}", flush=True)

    t, note = bench_bootstrap(boot_items, 5, 1000, repeat)
    done(("alpha + 1000-resample bootstrap", f"{boot_items:,} x 5", t, 30.0, note))

    with tempfile.TemporaryDirectory() as tmp:
        res = bench_db(f"sqlite:///{tmp}/bench.db", db_items, repeat, True, Path(tmp))
        done(("point alpha, SQLite, end to end", f"{db_items:,} x 3", res["point"][0], 5.0, res["point"][1]))
        done(("gold snapshot -> Parquet, SQLite", f"{db_items:,} rows", res["gold"][0], 15.0, res["gold"][1]))
        pg = None if args.no_pg else pg_schema_url(os.environ.get("SAFEREVIEW_BENCH_PG", PG_DEFAULT))
        if pg is None:
            done(("point alpha, PostgreSQL, end to end", f"{db_items:,} x 3", None, 5.0, "skipped"))
        else:
            url, drop = pg
            try:
                res = bench_db(url, db_items, repeat, True, Path(tmp))
            finally:
                drop()
            done(("point alpha, PostgreSQL, end to end", f"{db_items:,} x 3", res["point"][0], 5.0, res["point"][1]))
            done(("gold snapshot -> Parquet, PostgreSQL", f"{db_items:,} rows", res["gold"][0], 15.0, res["gold"][1]))

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
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

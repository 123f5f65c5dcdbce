"""Import and export throughput (``python bench/bench_dataio.py [--quick] [--repeat N]``).

Measures, into SQLite and PostgreSQL (``SAFEREVIEW_BENCH_PG``, default
``postgresql://postgres@127.0.0.1:5432/test``, in a fresh schema dropped afterwards):

* 100k generic text items from JSONL (10k with ``--quick``), without and with two
  verdicts per item; targets: 20,000 items/s (SQLite) and 10,000 items/s (PostgreSQL);
* 2k items each with a distinct PNG image (every file decoded and stored by hash);
* re-import of the same text file (everything unchanged);
* export of the imported items to Parquet (target: 100k rows in under 5 s), CSV and JSONL.

Prints medians over ``--repeat`` runs and the ratio to each target (>1 = faster than target).

``--export-scale`` measures the streaming export instead: 100k and 1M text items with one
verdict each (``--sizes``), bulk-loaded straight into the tables (untimed), exported to
Parquet (``--formats``) by a child process that does nothing but the export, so its peak
RSS (``ru_maxrss``) is the export's own; target 1M rows in 5 s (200,000 rows/s) within
1 GB. ``--old FILE`` also runs another copy of ``safereview/dataio/export.py`` (e.g. the
pre-streaming one, ``git show 5f7ad0a:safereview/dataio/export.py > /tmp/export_old.py``)
on the same databases (``--old-repeat`` runs each, 1 by default: it needs minutes and GBs at
1M), and ``--old-max`` caps the sizes it runs at. ``--what annotations`` exports
annotations instead (one reviewer's labels on every item, so as many rows as items).

``--import-scale`` measures import at scale instead: text items with one verdict each
(``--sizes``, 100k and 1M by default) from JSONL through ``import_file`` into a fresh
database, in a child process per run (peak RSS is the import's own). Targets: 100k items/s
on SQLite and 60k/s on PostgreSQL at 1M, items/s at 1M at least 0.9x items/s at 100k, peak
RSS within 1 GB. ``--old-tree DIR`` also runs another checkout of safereview (e.g.
``git worktree add /tmp/sr-old HEAD~3``) on the same files, in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from pgschema import Unreachable, scratch_schema

from safereview.dataio.export import export_items
from safereview.dataio.importers import import_file
from safereview.db.engine import init_db
from safereview.db.models import ITEM_CONTENT_FIELDS
from safereview.workflow.principals import SystemPrincipal

BENCH = SystemPrincipal("bench")  # imports as the CLI would

PG = os.environ.get("SAFEREVIEW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def write_text_items(path: Path, n: int, verdicts: int) -> None:
    """``n`` generic text items with ``verdicts`` judge verdicts each (0, 1: joint, 2: joint and text)."""
    dumps = json.dumps
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            row: dict = {
                "id": f"item-{i}",
                "task_type": "image-text",
                "model": "bench-model",
                "category": "C9" if i % 3 else "",
                "prompt_text": f"Benchmark prompt number {i}: describe the weather in a calm voice.",
                "response_text": f"Response {i}: it is sunny with a light breeze and no harm at all.",
            }
            given = [
                {
                    "dimension": "joint",
                    "label": ("safe", "borderline", "unsafe")[i % 3],
                    "judge_id": "bench-judge",
                    "probability": (i % 100) / 100,
                },
                {"dimension": "text", "label": "safe", "judge_id": "bench-judge"},
            ][:verdicts]
            if given:
                row["verdicts"] = given
            fh.write(dumps(row) + "\n")


def write_media_items(folder: Path, n: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "media.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            name = f"img{i}.png"
            Image.new("RGB", (64, 48), ((i * 7) % 256, (i * 13) % 256, (i // 256) % 256)).save(folder / name)
            fh.write(json.dumps({"id": f"m{i}", "prompt_image": name, "prompt_text": f"picture {i}"}) + "\n")
    return path


class Backend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.schema = contextlib.ExitStack()  # the current PostgreSQL schema, dropped when replaced
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-dataio-{name}-"))

    def fresh_url(self) -> tuple[str, Path]:
        """A new empty database (no tables yet: whoever opens it first migrates it) and media root."""
        media_root = self.tmp / f"media-{uuid.uuid4().hex[:6]}"
        if self.name == "sqlite":
            return f"sqlite:///{self.tmp / uuid.uuid4().hex[:8]}.db", media_root
        self.schema.close()
        return self.schema.enter_context(scratch_schema(PG)), media_root

    def fresh(self) -> tuple[sa.Engine, Path]:
        """A new database with the schema of this checkout, and a media root."""
        url, media_root = self.fresh_url()
        return init_db(url), media_root

    def close(self) -> None:
        self.schema.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall seconds, this process's CPU seconds (the machine may be shared), and the result."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


# ---------------------------------------------------------------------------------------
# --export-scale: streaming export of 100k and 1M items, in a child process each
# ---------------------------------------------------------------------------------------

EXPORT_TARGET = 200_000  # rows/s: 1M items to Parquet in 5 s
EXPORT_RSS_MB = 1024
ITEM_COLS = ("collection_id", "external_id", *ITEM_CONTENT_FIELDS, "priority", "slots_taken", "created_at")
VERDICT_COLS = ("item_id", "dimension", "judge_id", "label", "probability")


def build_export_db(engine: sa.Engine, n: int, annotations: bool = False) -> None:
    """Untimed set-up: ``n`` text items from one import batch, one verdict each, inserted with
    ``db.bulk.bulk_insert`` (executemany on SQLite, COPY on PostgreSQL), then ANALYZE."""
    from sqlmodel import SQLModel

    from safereview.db import bulk
    from safereview.db.collections import ensure_collection
    from safereview.db.engine import session_scope
    from safereview.db.models import ImportBatch, utcnow

    with session_scope(engine) as s:
        cid = int(ensure_collection(s, "bench / export", "vlsu").id)  # type: ignore[arg-type]
        batch = ImportBatch(
            source="bench.jsonl", source_sha256="0" * 64, format="generic-jsonl", collection_id=cid, n_items=n
        )
        s.add(batch)
        s.flush()
        bid = int(batch.id)  # type: ignore[arg-type]
    now = utcnow()
    dumps = json.dumps

    def items() -> Iterator[tuple]:
        for i in range(n):
            yield (
                cid,
                f"item-{i}",
                "image-text",
                "C9" if i % 3 else "",
                "",
                "bench-model",
                "text",
                "text",
                dumps([{"modality": "text", "text": f"Benchmark prompt number {i}: describe the weather calmly."}]),
                dumps([{"modality": "text", "text": f'Response {i}:\nit is "sunny" with a light breeze, no harm.'}]),
                False,
                "{}",
                f"{i:064x}",
                (i % 7) / 7,
                0,
                now,
            )

    tables = SQLModel.metadata.tables
    with engine.begin() as conn:
        bulk.bulk_insert(
            conn, tables["item"], ITEM_COLS, items(), const={"import_batch_id": bid}, process=("created_at",)
        )
        first = int(conn.execute(sa.text("SELECT MIN(id) FROM item WHERE collection_id = :c"), {"c": cid}).scalar_one())
        verdicts = (
            (first + i, "joint", "bench-judge", ("safe", "borderline", "unsafe")[i % 3], (i % 100) / 100)
            for i in range(n)
        )
        const = {
            "judge_version": "",
            "status": "ok",
            "rationale": "",
            "raw_output": "",
            "intent": "",
            "created_at": now,
        }
        bulk.bulk_insert(conn, tables["verdict"], VERDICT_COLS, verdicts, const=const)
        if annotations:  # one reviewer's labels on every item
            uid = conn.execute(
                tables["user"].insert().values(username="bench-annotator", password_hash="!", role="annotator")
            ).inserted_primary_key[0]
            rows = (
                (first + i, dumps({"joint": ("safe", "borderline", "unsafe")[(i // 7) % 3]}), 4.5 + i % 10)
                for i in range(n)
            )
            const = {
                "user_id": uid,
                "categories": [],  # a JSON column: the constant goes through its type (serialised once)
                "rationale": "",
                "reveal_reason": "",
                "flagged": False,
                "source": "app",
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
            cols = ["item_id", "labels", "time_spent_s"]
            bulk.bulk_insert(conn, tables["annotation"], cols, rows, const=const, process=False)
        conn.exec_driver_sql("ANALYZE")


def export_child(url: str, out: str, fmt: str, impl: str, what: str = "items") -> int:
    """The child: one export (``what``: items or annotations), then its wall/CPU seconds, rows
    and peak RSS as a JSON line."""
    if impl == "new":
        from safereview.dataio import export as mod
    else:  # another copy of the module, e.g. the pre-streaming export
        spec = importlib.util.spec_from_file_location("export_under_test", impl)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
    from safereview.db.engine import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:  # connect (and import the driver) before the clock starts
        conn.exec_driver_sql("SELECT 1")
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    export = mod.export_items if what == "items" else mod.export_annotations
    wall, cpu, res = timed(lambda: export(engine, out, fmt))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu": cpu,
                "rows": res.rows,  # type: ignore[attr-defined]
                "rss_mb": usage.ru_maxrss / 1024,
                "rss_before_mb": before_kb / 1024,
                "bytes": os.path.getsize(out),
            }
        )
    )
    return 0


def run_child(url: str, out: Path, fmt: str, impl: str, what: str) -> dict:
    cmd = [sys.executable, __file__, "--export-child", url, str(out), fmt, impl, what]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"export child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_scale(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in args.sizes.split(",")]
    formats = args.formats.split(",")
    repeat = args.repeat or 3
    impls = ["new"] + ([str(Path(args.old).resolve())] if args.old else [])
    rows_out: list[tuple] = []
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        for name in ["sqlite"] + ([] if args.no_pg else ["postgresql"]):
            be = Backend(name)
            try:
                for n in sizes:
                    try:
                        engine, _root = be.fresh()
                    except Exception as exc:  # PostgreSQL not reachable
                        print(f"skipping {name}: {exc}", file=sys.stderr)
                        break
                    t0 = time.perf_counter()
                    build_export_db(engine, n, annotations=args.what == "annotations")
                    url = engine.url.render_as_string(hide_password=False)
                    engine.dispose()
                    print(f"{name}: built {n:,} items in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                    for impl in impls:
                        if impl != "new" and args.old_max and n > args.old_max:
                            continue
                        for fmt in formats:
                            runs = []
                            for _ in range(repeat if impl == "new" else args.old_repeat):
                                runs.append(run_child(url, work / f"out.{fmt}", fmt, impl, args.what))
                                runs[-1]["load"] = os.getloadavg()[0]
                                assert runs[-1]["rows"] == n, runs[-1]
                            label = "new" if impl == "new" else "old"
                            rows_out.append((name, label, fmt, n, runs))
                            print(f"  {label} {fmt} {n:,}: {[round(r['wall'], 2) for r in runs]} s", file=sys.stderr)
            finally:
                be.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nstreaming export benchmark, {args.what} (median of {repeat} runs, old code {args.old_repeat}; "
        f"{os.cpu_count()} CPUs, "
        f"load average at the end {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'backend':<11} {'code':<4} {'fmt':<8} {'n':>9} {'wall s':>7} {'rows/s':>9} {'CPU s':>6} "
        f"{'peak RSS MB':>11} {'load':>5} {'ratio':>6}"
    )
    rates: dict[tuple[str, str, str, int], float] = {}
    for be_name, label, fmt, n, runs in rows_out:
        w = statistics.median(r["wall"] for r in runs)
        c = statistics.median(r["cpu"] for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        load = statistics.median(r["load"] for r in runs)
        rate = n / w
        rates[(be_name, label, fmt, n)] = rate
        ratio = f"{rate / EXPORT_TARGET:.2f}" if fmt == "parquet" else "-"
        print(
            f"{be_name:<11} {label:<4} {fmt:<8} {n:>9,} {w:>7.2f} {rate:>9,.0f} {c:>6.2f} {rss:>11,.0f} "
            f"{load:>5.1f} {ratio:>6}"
        )
    lo, hi = min(sizes), max(sizes)
    for (be_name, label, fmt, n), rate in rates.items():
        if n == hi and hi != lo and (be_name, label, fmt, lo) in rates:
            print(
                f"{be_name} {label} {fmt}: rows/s at {hi:,} / rows/s at {lo:,} = "
                f"{rate / rates[(be_name, label, fmt, lo)]:.2f} (1.0 = flat)"
            )
    for (be_name, label, fmt, n), rate in rates.items():
        if label == "old" and (be_name, "new", fmt, n) in rates:
            print(f"{be_name} {fmt} {n:,}: new / old rows/s = {rates[(be_name, 'new', fmt, n)] / rate:.1f}")
    print(
        f"ratio = rows/s / {EXPORT_TARGET:,} (1M rows in 5 s; >= 1 meets it); peak RSS = the export child's "
        f"ru_maxrss (interpreter and imports included; target <= {EXPORT_RSS_MB} MB); load = 1-min load average "
        "after each run; CPU s = the child only (PostgreSQL server time excluded)."
    )
    return 0


# ---------------------------------------------------------------------------------------
# --import-scale: import of 100k and 1M items with one verdict each, in a child process each
# ---------------------------------------------------------------------------------------

IMPORT_TARGET = {"sqlite": 100_000, "postgresql": 60_000}  # items/s at 1M
IMPORT_RSS_MB = 1024
IMPORT_CHILD = Path(__file__).with_name("import_child.py")


def import_scale(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in args.sizes.split(",")]
    repeat = args.repeat or 3
    trees = ["-"] + ([str(Path(args.old_tree).resolve())] if args.old_tree else []) + ["floor"]
    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    rows_out: list[tuple] = []
    try:
        files = {}
        for n in sizes:
            files[n] = work / f"items-{n}.jsonl"
            write_text_items(files[n], n, verdicts=1)  # the "text items with one verdict"
        for name in ([] if args.no_sqlite else ["sqlite"]) + ([] if args.no_pg else ["postgresql"]):
            be = Backend(name)
            try:
                for n in sizes:
                    runs: dict[str, list[dict]] = {t: [] for t in trees}
                    for _ in range(repeat):
                        for tree in trees:  # interleaved: old and new see the same load
                            try:  # the child migrates: each checkout gets its own schema
                                url, root = be.fresh_url()
                            except Unreachable as exc:
                                print(f"skipping {name}: {exc}", file=sys.stderr)
                                raise _Skip from None
                            cmd = [sys.executable, str(IMPORT_CHILD), url, str(files[n]), str(root), tree]
                            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                            if proc.returncode != 0:
                                raise RuntimeError(f"import child failed: {proc.stderr[-2000:]}")
                            res = json.loads(proc.stdout.strip().splitlines()[-1])
                            res["load"] = os.getloadavg()[0]
                            assert res["items"] == n, res
                            runs[tree].append(res)
                            print(f"  {name} {_code(tree)} {n:,}: {res['wall']:.2f} s", file=sys.stderr)
                    for tree in trees:
                        rows_out.append((name, _code(tree), n, runs[tree]))
            except _Skip:
                pass
            finally:
                be.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nimport at scale, text items with one verdict (median of {repeat} runs; {os.cpu_count()} CPUs, "
        f"load average at the end {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'backend':<11} {'code':<5} {'n':>9} {'wall s':>7} {'items/s':>9} {'CPU s':>6} "
        f"{'peak RSS MB':>11} {'load':>5}"
    )
    rates: dict[tuple[str, str, int], float] = {}
    for be_name, label, n, runs in rows_out:
        w = statistics.median(r["wall"] for r in runs)
        c = statistics.median(r["cpu"] for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        load = statistics.median(r["load"] for r in runs)
        rates[(be_name, label, n)] = n / w
        print(f"{be_name:<11} {label:<5} {n:>9,} {w:>7.2f} {n / w:>9,.0f} {c:>6.2f} {rss:>11,.0f} {load:>5.1f}")
    lo, hi = min(sizes), max(sizes)
    for (be_name, label, n), rate in rates.items():
        if n == hi and label != "floor":
            print(
                f"{be_name} {label}: items/s at {hi:,} / target {IMPORT_TARGET[be_name]:,} = "
                f"{rate / IMPORT_TARGET[be_name]:.2f}"
            )
            if hi != lo and (be_name, label, lo) in rates:
                print(
                    f"{be_name} {label}: items/s at {hi:,} / items/s at {lo:,} = "
                    f"{rate / rates[(be_name, label, lo)]:.2f} (target >= 0.9)"
                )
        if label == "old" and (be_name, "new", n) in rates:
            print(f"{be_name} {n:,}: new / old items/s = {rates[(be_name, 'new', n)] / rate:.2f}")
        if label == "floor" and (be_name, "new", n) in rates:
            print(
                f"{be_name} {n:,}: new / floor items/s = {rates[(be_name, 'new', n)] / rate:.2f} "
                "(floor: the same rows through db.bulk.bulk_insert alone, nothing read or checked)"
            )
    print(
        f"peak RSS = the import child's ru_maxrss (interpreter and imports included; target <= {IMPORT_RSS_MB} MB); "
        "CPU s = the child only (PostgreSQL server time excluded); load = 1-min load average after each run."
    )
    return 0


class _Skip(Exception):
    pass


def _code(tree: str) -> str:
    return {"-": "new", "floor": "floor"}.get(tree, "old")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--export-child":
        return export_child(*sys.argv[2:7])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k text items, 200 media items, one run")
    ap.add_argument("--repeat", type=int, default=None, help="runs per measurement (median reported)")
    ap.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    ap.add_argument("--no-sqlite", action="store_true", help="--import-scale: skip SQLite")
    ap.add_argument("--export-scale", action="store_true", help="streaming export of --sizes items (see above)")
    ap.add_argument("--sizes", default="100000,1000000", help="--export-scale: item counts")
    ap.add_argument("--formats", default="parquet", help="--export-scale: comma-separated formats")
    ap.add_argument("--what", choices=("items", "annotations"), default="items", help="--export-scale: what to export")
    ap.add_argument("--old", default=None, help="--export-scale: also run this copy of export.py")
    ap.add_argument("--old-max", type=int, default=None, help="--export-scale: largest size for --old")
    ap.add_argument("--old-repeat", type=int, default=1, help="--export-scale: runs of the --old code")
    ap.add_argument("--import-scale", action="store_true", help="import of --sizes items at scale (see above)")
    ap.add_argument("--old-tree", default=None, help="--import-scale: also run this checkout of safereview")
    args = ap.parse_args()
    if args.export_scale:
        return export_scale(args)
    if args.import_scale:
        return import_scale(args)
    n_text = 10_000 if args.quick else 100_000
    n_media = 200 if args.quick else 2_000
    repeat = args.repeat or (1 if args.quick else 3)

    # (backend, measurement) -> [n, [wall...], [cpu...], target rate or None]
    results: dict[tuple[str, str], list] = {}

    def record(be: str, what: str, n: int, wall: float, cpu: float, target: float | None) -> None:
        results.setdefault((be, what), [n, [], [], target])
        results[(be, what)][1].append(wall)
        results[(be, what)][2].append(cpu)

    work = Path(tempfile.mkdtemp(prefix="bench-dataio-"))
    try:
        plain = work / "text.jsonl"
        withv = work / "text_verdicts.jsonl"
        write_text_items(plain, n_text, verdicts=0)
        write_text_items(withv, n_text, verdicts=2)
        media_file = write_media_items(work / "media", n_media)
        for name in ["sqlite"] + ([] if args.no_pg else ["postgresql"]):
            target = 20_000 if name == "sqlite" else 10_000
            be = Backend(name)
            try:
                try:
                    be.fresh()[0].dispose()
                except Exception as exc:  # PostgreSQL not reachable
                    print(f"skipping {name}: {exc}", file=sys.stderr)
                    continue
                for label, path, n in (
                    ("text items", plain, n_text),
                    ("text items + 2 verdicts", withv, n_text),
                    ("media items (PNG)", media_file, n_media),
                ):
                    for _ in range(repeat):
                        engine, root = be.fresh()

                        def run(e: sa.Engine = engine, r: Path = root, p: Path = path) -> object:
                            return import_file(e, p, collection="bench", taxonomy="vlsu", media_root=r, actor=BENCH)

                        wall, cpu, rep = timed(run)
                        assert rep.ok, rep.errors[:5]  # type: ignore[attr-defined]
                        record(name, f"import {label}", n, wall, cpu, target if label.startswith("text") else None)
                        if label == "text items + 2 verdicts":
                            wall, cpu, _ = timed(run)
                            record(name, "re-import (all unchanged)", n, wall, cpu, None)
                            for fmt in ("parquet", "csv", "jsonl"):
                                out = work / f"export.{fmt}"
                                wall, cpu, _ = timed(lambda e=engine, o=out, f=fmt: export_items(e, o, f))
                                # target: 100k rows in under 5 s = 20,000 rows/s
                                record(name, f"export {fmt}", n, wall, cpu, 20_000 if fmt == "parquet" else None)
                        engine.dispose()
            finally:
                be.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\ndataio benchmark ({'quick' if args.quick else 'full'}, median of {repeat}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"{'backend':<11} {'measurement':<30} {'n':>7} {'wall s':>7} {'rate/s':>9} {'CPU s':>6} "
        f"{'rate/CPU-s':>10} {'target/s':>9} {'ratio':>6}"
    )
    for (be_name, what), (n, walls, cpus, tgt) in results.items():
        w, c = statistics.median(walls), statistics.median(cpus)
        rate = n / w if w > 0 else float("inf")
        crate = n / c if c > 0 else float("inf")
        ratio = f"{rate / tgt:.2f}" if tgt else "-"
        tgt_s = f"{tgt:,.0f}" if tgt else "-"
        print(
            f"{be_name:<11} {what:<30} {n:>7} {w:>7.2f} {rate:>9,.0f} {c:>6.2f} {crate:>10,.0f} {tgt_s:>9} {ratio:>6}"
        )
    print(
        "rate = items (or rows) per wall-clock second; ratio = rate / target (>= 1 meets the target);"
        " CPU s = this process only (PostgreSQL server time excluded)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Import and export throughput (``python bench/bench_dataio.py [--quick] [--repeat N]``).

Measures, into SQLite and PostgreSQL (``SAFEREVIEW_BENCH_PG``, default
``postgresql://postgres@127.0.0.1:5432/test``, in a fresh schema dropped afterwards):

* 100k generic text items from JSONL (10k with ``--quick``), without and with two
  verdicts per item; targets: 20,000 items/s (SQLite) and 10,000 items/s (PostgreSQL);
* 2k items each with a distinct PNG image (every file decoded and stored by hash);
* re-import of the same text file (everything unchanged);
* export of the imported items to Parquet (target: 100k rows in under 5 s), CSV and JSONL.

Prints medians over ``--repeat`` runs and the ratio to each target (>1 = faster than target).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from safereview.dataio.export import export_items
from safereview.dataio.importers import import_file
from safereview.db.engine import init_db, normalise_url
from safereview.workflow.principals import SystemPrincipal

BENCH = SystemPrincipal("bench")  # imports as the CLI would

PG = os.environ.get("SAFEREVIEW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def write_text_items(path: Path, n: int, verdicts: bool) -> None:
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
            if verdicts:
                row["verdicts"] = [
                    {
                        "dimension": "joint",
                        "label": ("safe", "borderline", "unsafe")[i % 3],
                        "judge_id": "bench-judge",
                        "probability": (i % 100) / 100,
                    },
                    {"dimension": "text", "label": "safe", "judge_id": "bench-judge"},
                ]
            fh.write(json.dumps(row) + "\n")


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
        self.schema: str | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-dataio-{name}-"))

    def fresh(self) -> tuple[sa.Engine, Path]:
        """A new empty database and media root."""
        media_root = self.tmp / f"media-{uuid.uuid4().hex[:6]}"
        if self.name == "sqlite":
            return init_db(f"sqlite:///{self.tmp / uuid.uuid4().hex[:8]}.db"), media_root
        admin = sa.create_engine(normalise_url(PG), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if self.schema:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            self.schema = f"bench_{uuid.uuid4().hex[:10]}"
            conn.exec_driver_sql(f"CREATE SCHEMA {self.schema}")
        admin.dispose()
        sep = "&" if "?" in PG else "?"
        return init_db(f"{normalise_url(PG)}{sep}options=-csearch_path%3D{self.schema}"), media_root

    def close(self) -> None:
        if self.schema:
            admin = sa.create_engine(normalise_url(PG), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            admin.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall seconds, this process's CPU seconds (the machine may be shared), and the result."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k text items, 200 media items, one run")
    ap.add_argument("--repeat", type=int, default=None, help="runs per measurement (median reported)")
    ap.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    args = ap.parse_args()
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
        write_text_items(plain, n_text, verdicts=False)
        write_text_items(withv, n_text, verdicts=True)
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

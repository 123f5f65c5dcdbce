"""One timed import for ``bench_dataio.py --import-scale``, run as a child process.

``python bench/import_child.py URL FILE MEDIA_ROOT TREE`` imports FILE into the database at
URL and prints wall and CPU seconds, items and peak RSS as one JSON line. TREE is ``-`` for
the installed safereview or another checkout's folder (nothing of safereview is imported at
the top, so that checkout's code is the one measured), or ``floor`` for the bare bulk insert
of as many items and verdicts (:func:`floor_child`).
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
from pathlib import Path


def use_tree(tree: str) -> None:
    """Import ``safereview`` from another checkout (its folders mapped as pyproject.toml maps them)."""
    root = Path(tree).resolve()
    mapping = {"safereview": root / "safereview"}
    for sub in ("db", "judge", "review_app", "agreement", "data"):
        mapping[f"safereview.{sub}"] = root / sub

    class Finder:
        @staticmethod
        def find_spec(name: str, path: object = None, target: object = None) -> object:
            folder = mapping.get(name)
            if folder is None:
                return None
            return importlib.util.spec_from_file_location(
                name, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )

    sys.meta_path.insert(0, Finder)  # type: ignore[arg-type]
    for name in [m for m in sys.modules if m == "safereview" or m.startswith("safereview.")]:
        del sys.modules[name]


def floor_child(url: str, path: str) -> int:
    """The floor: the same number of items and verdicts written by ``db.bulk.bulk_insert`` alone
    (no reading, checking or planning): what any import into this schema costs at least."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_dataio import build_export_db

    from safereview.db.engine import init_db as init

    with open(path, "rb") as fh:
        n = sum(1 for _ in fh)
    engine = init(url)
    w0, c0 = time.perf_counter(), time.process_time()
    build_export_db(engine, n)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "cpu": cpu, "items": n, "rss_mb": rss}))
    return 0


def import_child(url: str, path: str, media_root: str, tree: str) -> int:
    """The child: one import into a fresh database, then wall/CPU seconds and peak RSS as JSON."""
    if tree == "floor":
        return floor_child(url, path)
    if tree != "-":
        use_tree(tree)
    from safereview.dataio.importers import import_file as imp
    from safereview.db.engine import init_db as init
    from safereview.workflow.principals import SystemPrincipal as Principal

    engine = init(url)
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    w0, c0 = time.perf_counter(), time.process_time()
    rep = imp(engine, path, collection="bench", taxonomy="vlsu", media_root=media_root, actor=Principal("bench"))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    assert rep.ok, rep.errors[:5]  # type: ignore[attr-defined]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"wall": wall, "cpu": cpu, "items": rep.items_new, "rss_mb": usage.ru_maxrss / 1024}  # type: ignore[attr-defined]
    out["rss_before_mb"] = before_kb / 1024
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(import_child(*sys.argv[1:5]))

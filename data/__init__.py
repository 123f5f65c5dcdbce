"""Bundled demo data: the files under ``demo/`` ship as package data; ``make_demo`` regenerates them."""

from pathlib import Path

# This folder is installed as safereview.data (pyproject's package-dir); the bare name is
# refused so that code run from a checkout cannot import a second copy of it by accident.
if __name__ != "safereview.data":
    raise ImportError(f"import safereview.data, not {__name__}")

DEMO_DIR = Path(__file__).resolve().parent / "demo"

"""The pip user's path: one import name, a wheel that carries everything, a demo from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
OLD_NAMES = ("db", "judge", "workflow", "agreement", "dataio", "review_app")


def _folder_of(package: str) -> Path:
    setup = PYPROJECT["tool"]["setuptools"]
    mapped = setup.get("package-dir", {})
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in mapped:
            return REPO / mapped[head] / Path(*parts[n:])
    return REPO / Path(*parts)


def test_every_package_folder_is_listed_and_every_listed_package_exists() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    for package in listed:
        assert (_folder_of(package) / "__init__.py").is_file(), f"{package}: no __init__.py at {_folder_of(package)}"
    roots = {_folder_of(p) for p in listed}
    on_disk = {
        init.parent
        for root in roots
        for init in root.rglob("__init__.py")
        if "__pycache__" not in init.parts and ".venv" not in init.parts
    }
    assert on_disk <= roots, f"package folders missing from pyproject's packages: {sorted(on_disk - roots)}"


@pytest.mark.parametrize("name", OLD_NAMES)
def test_the_old_top_level_names_do_not_import(name: str) -> None:
    """Not even from the repository root, where the folders are on sys.path."""
    r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0, f"import {name} worked"
    assert "ImportError" in r.stderr or "ModuleNotFoundError" in r.stderr


@pytest.mark.slow
def test_wheel_holds_one_package_and_builds_the_demo_outside_the_checkout(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    src = tmp_path / "src"  # a copy, so the build's own folders never land in the checkout
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "test-artifacts", "bench"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = out.glob("safereview-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"safereview", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "safereview/data/demo/uni-safebench/composite_unsafe.jsonl" in names
    assert "safereview/db/migrations/env.py" in names and "safereview/review_app/asgi.py" in names
    assert not any(n.endswith("make_demo.py") and "/demo/" in n for n in names)

    # A throw-away environment: the project's dependencies come from this environment's
    # site-packages (added as a plain path, so its editable install of safereview is not),
    # safereview only from the wheel.
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFEREVIEW_", "PYTHON"))}
    where = subprocess.run(
        [py, "-c", "import safereview.db; print(safereview.db.__file__)"],
        cwd=elsewhere,
        env=clean_env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where
    r = subprocess.run(
        [env_dir / "bin" / "safereview", "demo", "--dir", "D", "--no-serve"],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (elsewhere / "D" / "safereview.db").is_file() and any((elsewhere / "D" / "media").rglob("*.png"))
    assert "admin" in r.stdout and "password" in r.stdout
    assert sorted(p.name for p in elsewhere.iterdir()) == ["D"], "the build left something beside the demo"

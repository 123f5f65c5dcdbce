"""Every ```python block in README.md and docs/*.md runs, against the bundled demo.

Documentation that is never run rots first. Each Markdown file's blocks run in order in one
namespace, in a fresh folder holding what `safereview demo --dir . --no-serve` builds (the
demo database, its media and users) and a ``data`` link to the repository's demo files, so
an example can say ``sqlite:///safereview.db`` or ``data/demo/...`` exactly as a reader
would type it. A few files need a shell step first, as their prose says; those steps are
listed in ``BEFORE`` and go through the real CLI. Examples that load with Hugging Face
``datasets`` run offline, its cache in the test's folder (the ``hf_offline`` fixture).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# shell steps a file's prose asks the reader to run before its Python blocks
BEFORE: dict[str, list[list[str]]] = {
    "export.md": [
        ["export", "items", "--out", "items.parquet", "--db", "sqlite:///safereview.db"],
        ["export", "annotations", "--out", "annotations.csv", "--db", "sqlite:///safereview.db"],
    ],
    "agreement.md": [
        ["export", "gold", "-c", "vlsu / demo", "--format", "hf", "-o", "gold-hf", "--db", "sqlite:///safereview.db"],
        ["export", "gold", "-c", "vlsu / demo", "-o", "gold.parquet", "--db", "sqlite:///safereview.db"],
    ],
}


def _after_import(folder: Path, ns: dict) -> None:
    assert ns["report"].ok and ns["report"].items_new == 3 and (folder / "review.db").exists()
    assert (folder / "inspect.db").exists() and Path(ns["log"].location).suffix == ".eval"


def _after_export(folder: Path, ns: dict) -> None:
    assert (folder / "vlsu-items.parquet").exists() and (folder / "vlsu-annotations.jsonl").exists()
    assert not ns["wide"].empty and len(ns["data"]["external_id"]) == len(ns["items"])


def _after_workflow(folder: Path, ns: dict) -> None:
    assert ns["ann"].version == 1 and ns["shown"], "the reveal showed no verdict"


def _after_agreement(folder: Path, ns: dict) -> None:
    assert (folder / "release" / "README.md").exists() and ns["table"].num_rows > 0
    assert ns["rep"]["dimensions"][0]["overall"]["few_units"] is True
    assert ns["label"].names == ["safe", "borderline", "unsafe"] and ns["vlsu"].num_rows == ns["gold"].num_rows > 0


# what each file's examples leave behind, checked after they ran
AFTER: dict[str, Callable[[Path, dict], None]] = {
    "import.md": _after_import,
    "export.md": _after_export,
    "workflow.md": _after_workflow,
    "agreement.md": _after_agreement,
}


def python_blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


DOCS_WITH_CODE = [p for p in DOCS if python_blocks(p)]


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safereview.cli.app_cmds import ensure_demo_users
    from safereview.dataio.demo import build_demo

    folder = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{folder / 'safereview.db'}"
    build_demo(url, folder / "media")
    ensure_demo_users(url)
    return folder


def test_the_examples_are_found() -> None:
    names = {p.name for p in DOCS_WITH_CODE}
    assert {"import.md", "export.md", "workflow.md", "agreement.md", "judge.md"} <= names
    assert set(AFTER) <= names and set(BEFORE) <= names


@pytest.mark.parametrize("doc", DOCS_WITH_CODE, ids=lambda p: p.name)
def test_python_examples_run(
    doc: Path, demo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hf_offline: Path
) -> None:
    from safereview.cli.main import app

    shutil.copy(demo_folder / "safereview.db", tmp_path / "safereview.db")
    shutil.copytree(demo_folder / "media", tmp_path / "media")
    (tmp_path / "data").symlink_to(REPO / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAFEREVIEW_MEDIA_ROOT", str(tmp_path / "media"))
    for args in BEFORE.get(doc.name, []):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
    ns: dict = {"__name__": "__docs__"}
    for line, code in python_blocks(doc):
        exec(compile(code, f"{doc.relative_to(REPO)}:{line}", "exec"), ns)
    if doc.name in AFTER:
        AFTER[doc.name](tmp_path, ns)
    engine = ns.get("engine")
    if engine is not None:
        engine.dispose()

"""The house rules, checked on the source: services never import Streamlit, pages only call
services, and the storage layer imports nothing above it (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest


def _root(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _files(package: str) -> list[Path]:
    return sorted(p for p in _root(package).rglob("*.py") if "__pycache__" not in p.parts)


def _offending(package: str, banned: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(_root(package).parent)}: {mod}"
        for path in _files(package)
        for mod in sorted(_imports(path))
        if any(mod == b or mod.startswith(b + ".") for b in banned)
    ]


SERVICES = ("safereview.workflow", "safereview.dataio", "safereview.agreement", "safereview.judge", "safereview.db")


@pytest.mark.parametrize("package", SERVICES)
def test_services_never_import_streamlit(package: str) -> None:
    assert _offending(package, ("streamlit", "safereview.review_app")) == []


def test_pages_only_call_services() -> None:
    """No page opens the ORM or SQL itself: it calls a service function that checks the role."""
    banned = ("sqlmodel", "sqlalchemy", "safereview.db.models", "safereview.db.engine")
    assert _offending("safereview.review_app.views", banned) == []


def test_storage_imports_nothing_above_it() -> None:
    above = ("safereview.workflow", "safereview.dataio", "safereview.agreement", "safereview.judge")
    above += ("safereview.review_app", "safereview.cli", "safereview.settings")
    assert _offending("safereview.db", above) == []


def test_the_scan_sees_imports() -> None:
    """A guard against a scan that passes because it reads nothing."""
    assert "streamlit" in {m.split(".")[0] for p in _files("safereview.review_app") for m in _imports(p)}
    assert "sqlalchemy" in {m for p in _files("safereview.db") for m in _imports(p)}

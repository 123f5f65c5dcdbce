"""The row-count limit per import: a clear message naming the line, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from safereview.cli.main import app
from safereview.dataio.importers import import_file
from safereview.workflow.principals import SystemPrincipal

SYSTEM = SystemPrincipal("test")  # the trusted caller the CLI would be


def _items(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "id": f"r{i}",
                        "task_type": "malicious-text-generation",
                        "prompt_text": "hello",
                        "response_text": "hi",
                    }
                )
                + "\n"
            )
    return path


def test_row_limit_refuses_the_file_and_writes_nothing(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFEREVIEW_MAX_IMPORT_ROWS", "3")
    small = import_file(
        engine, _items(tmp_path / "small.jsonl", 3), collection="c", taxonomy="uni-safebench", actor=SYSTEM
    )
    assert small.ok and small.items_new == 3
    big = import_file(engine, _items(tmp_path / "big.jsonl", 5), collection="c", taxonomy="uni-safebench", actor=SYSTEM)
    assert not big.ok
    text = "\n".join(big.errors)
    assert "big.jsonl:4: (file): more than 3 rows in one import" in text
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM item").scalar_one() == 3


def test_row_limit_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEREVIEW_MAX_IMPORT_ROWS", "2")
    db = f"sqlite:///{tmp_path / 'x.db'}"
    result = CliRunner().invoke(
        app,
        [
            "import",
            str(_items(tmp_path / "rows.jsonl", 4)),
            "--collection",
            "c",
            "--taxonomy",
            "uni-safebench",
            "--db",
            db,
        ],
    )
    assert result.exit_code != 0
    assert "rows.jsonl:3: (file): more than 2 rows in one import" in result.output

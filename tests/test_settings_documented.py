"""Every setting in ``safereview.settings`` is documented in the README (datasette's idea)."""

from __future__ import annotations

from pathlib import Path

import pytest

from safereview.settings import SETTINGS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.env)
def test_setting_is_in_readme(setting) -> None:  # type: ignore[no-untyped-def]
    assert f"`{setting.env}`" in README, f"{setting.env} is not documented in README.md"

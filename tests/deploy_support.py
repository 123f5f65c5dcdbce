"""Shared by ``tests/test_deploy*.py``: Debian's nginx (or a skip), the replicas' settings.

The nginx tests skip when nginx is not installed, except with
``SAFEREVIEW_REQUIRE_NGINX=1`` (CI), where a missing nginx is a failure, as
``SAFEREVIEW_REQUIRE_BROWSER`` does for chromium.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import fleet  # noqa: E402

from safereview import deploy  # noqa: E402

REQUIRE_NGINX = os.environ.get("SAFEREVIEW_REQUIRE_NGINX") == "1"


def nginx_or_skip() -> str:
    found = fleet.nginx_binary()
    if found:
        return found
    if REQUIRE_NGINX:
        pytest.fail("nginx is missing but SAFEREVIEW_REQUIRE_NGINX=1 (apt-get install nginx)", pytrace=False)
    pytest.skip("Debian's nginx is not installed (apt-get install nginx); SAFEREVIEW_REQUIRE_NGINX=1 makes this fail")


def replica_env(db_url: str, media_root: Path, **extra: str) -> dict[str, str]:
    """The shipped environment file, rendered for this database and media root, plus ``extra``."""
    text = deploy.env_file(deploy.Env(db_url=db_url, media_root=str(media_root)))
    return {**deploy.read_env_file(text), "SAFEREVIEW_CACHE_DIR": str(media_root.parent / "derived"), **extra}

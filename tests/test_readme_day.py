"""The README's "A day with safereview" runs as written, on the demo, against a local
OpenAI-protocol server: every line but ``safereview serve`` (which other tests drive).

It proves the walk-through's promises too: a judge run with log-probabilities stores them,
commands refuse to guess when several judges have verdicts, and a lead and an admin exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from judge_support import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_day() -> list[str]:
    """The commands of the README's "A day with safereview" block, continuation lines joined."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## A day with safereview\n.*?```bash\n(.*?)```", text, flags=re.S)
    assert block, "README.md lost its 'A day with safereview' bash block"
    commands, current = [], ""
    for line in block.group(1).splitlines():
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if current.strip() and not current.lstrip().startswith("#"):
                commands.append(current.strip())
            current = ""
    return commands


def test_the_readme_day_runs_as_written(tmp_path: Path) -> None:
    commands = readme_day()
    served = [c for c in commands if c.startswith("safereview serve")]
    assert len(served) == 1  # the one line this test leaves to the app tests
    (tmp_path / "data").symlink_to(REPO / "data")  # the README runs from the repository's folder
    script = tmp_path / "day.sh"
    script.write_text(
        "set -euo pipefail\n" + "\n".join(c for c in commands if c not in served) + "\n", encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEREVIEW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with FakeOpenAI() as server:
        env["JUDGE_URL"], env["JUDGE_MODEL"] = server.url, "day-model"
        run = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert server.requests, "the judge never called the server"
    out = run.stdout
    assert "with a probability" in out and "no usable log-probabilities" not in out
    assert "gold snapshot" in out and (tmp_path / "gold.parquet").is_file()
    assert "calibration" in out and "design-weighted" in out
    # the day's database: the new judge's verdicts carry probabilities, a lead and an admin exist
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / '.demo' / 'safereview.db'}")
    try:
        with engine.connect() as conn:
            judged = conn.execute(
                sa.text(
                    "SELECT COUNT(*), COUNT(probability) FROM verdict "
                    "WHERE judge_id LIKE 'uni-judger:day-model:%' AND status = 'ok'"
                )
            ).one()
            roles = {
                r[0]: r[1]
                for r in conn.execute(sa.text("SELECT username, role FROM user WHERE username IN ('lee', 'ada')"))
            }
    finally:
        engine.dispose()
    assert judged[0] > 0 and judged[1] == judged[0]  # every model-judged verdict has its probability
    assert roles == {"lee": "lead", "ada": "admin"}
    # without --judge, a command refuses to guess between the demo's judge and the new one
    refused = subprocess.run(
        ["safereview", "audit", "-c", "uni-safebench / demo-unified-model", "--dimension", "contextual"],
        cwd=tmp_path,
        env={**env, "SAFEREVIEW_DB": f"sqlite:///{tmp_path / '.demo' / 'safereview.db'}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "several judges have verdicts here" in refused.stdout + refused.stderr
    assert (
        "uni-judger-demo" in refused.stdout + refused.stderr
        and "uni-judger:day-model" in refused.stdout + refused.stderr
    )

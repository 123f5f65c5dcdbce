"""Run the hardening tests and print what they exercised as a Markdown table.

Not a benchmark: the numbers are counts (inputs tried, faults injected, labels checked,
processes killed, role×action pairs checked, ...) that the tests themselves append to
``test-artifacts/hardening-counters.jsonl`` via ``tests/hardening_support.tally``; pass /
fail / skip come from pytest's JUnit XML. Nothing in the table is written by hand.

    python bench/reliability_report.py            # runs tests/test_hardening_*.py
    python bench/reliability_report.py --no-run   # only re-prints the last run's counters

Set ``SAFEREVIEW_TEST_PG`` to include the PostgreSQL variants (as CI does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
COUNTERS = ARTIFACTS / "hardening-counters.jsonl"
JUNIT = ARTIFACTS / "hardening-junit.xml"

LABELS = {
    "inputs_tried": "hostile inputs tried",
    "inputs_refused": "… refused (FILE:LINE: field: message; 4xx or no file from the media route)",
    "inputs_accepted": "… accepted and stored verbatim / safely decoded",
    "inputs_rendered": "accepted inputs rendered in chromium",
    "requests_recorded": "browser requests recorded (all to 127.0.0.1)",
    "limits_checked": "size/length limits checked",
    "faults_injected": "faults injected (SIGKILLs, failed sign-ins)",
    "processes_started": "annotator processes run concurrently",
    "processes_killed": "processes SIGKILLed mid-work",
    "labels_checked": "labels compared with the database",
    "rows_checked": "rows checked after crash + re-run",
    "retried_db_errors": "transient DB errors retried by annotators",
    "role_action_pairs_checked": "role × action pairs checked",
    "attacks_tried": "attacks performed (sign-in spam and races, session-id reuse, cross-site websocket, login CSRF, "
    "uploads, downloads)",
    "attacks_held": "… held (refused, slowed or without effect)",
}


def run_tests(extra: list[str]) -> int:
    ARTIFACTS.mkdir(exist_ok=True)
    COUNTERS.unlink(missing_ok=True)
    tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_hardening_*.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={JUNIT}", *tests, *extra]
    env = {**os.environ, "SAFEREVIEW_HARDENING_COUNTERS": str(COUNTERS)}
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def outcomes() -> dict[str, dict[str, int]]:
    """file -> {passed, failed, skipped} from the JUnit XML."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0})
    if not JUNIT.is_file():
        return out
    for case in ET.parse(JUNIT).getroot().iter("testcase"):
        f = case.get("classname", "").split(".")[-1] + ".py"
        if case.find("failure") is not None or case.find("error") is not None:
            out[f]["failed"] += 1
        elif case.find("skipped") is not None:
            out[f]["skipped"] += 1
        else:
            out[f]["passed"] += 1
    return out


def counters() -> dict[str, dict[str, int]]:
    """file -> counter -> sum."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    if COUNTERS.is_file():
        for line in COUNTERS.read_text().splitlines():
            row = json.loads(line)
            f = Path(row.pop("test").split("::")[0]).name
            for k, v in row.items():
                out[f][k] += int(v)
    return out


def table() -> str:
    cnt, res = counters(), outcomes()
    files = sorted(set(cnt) | set(res))
    totals: dict[str, int] = defaultdict(int)
    for f in files:
        for k, v in cnt[f].items():
            totals[k] += v
    lines = ["| what | count |", "| --- | ---: |"]
    for key, label in LABELS.items():
        if totals.get(key):
            lines.append(f"| {label} | {totals[key]:,} |")
    for key in sorted(set(totals) - set(LABELS)):
        lines.append(f"| {key} | {totals[key]:,} |")
    lines += ["", "| test file | passed | failed | skipped |", "| --- | ---: | ---: | ---: |"]
    for f in files:
        r = res[f]
        lines.append(f"| `{f}` | {r['passed']} | {r['failed']} | {r['skipped']} |")
    s = {k: sum(res[f][k] for f in files) for k in ("passed", "failed", "skipped")}
    lines.append(f"| **all** | {s['passed']} | {s['failed']} | {s['skipped']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-run", action="store_true", help="print the last run's counters without running tests")
    ap.add_argument(
        "--write",
        action="store_true",
        help="also replace the marked results block in README.md and docs/reliability.md",
    )
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args()
    rc = 0 if args.no_run else run_tests(args.pytest_args)
    text = table()
    print()
    print(text)
    if args.write:
        for doc in (REPO / "README.md", REPO / "docs" / "reliability.md"):
            write_block(doc, text)
    return rc


START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"


def write_block(doc: Path, text: str) -> None:
    """Replace the text between the markers, so the published table is always the script's."""
    body = doc.read_text(encoding="utf-8")
    if START not in body or END not in body:
        raise SystemExit(f"{doc}: markers {START} ... {END} not found")
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
    print(f"wrote {doc}")


if __name__ == "__main__":
    raise SystemExit(main())

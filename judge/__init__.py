"""Judging: Uni-Judger and VLSU protocols on any OpenAI-compatible server, verdict import, judge-only figures."""

# This folder is installed as safereview.judge (pyproject's package-dir); the bare name is
# refused so that code run from a checkout cannot import a second copy of it by accident.
if __name__ != "safereview.judge":
    raise ImportError(f"import safereview.judge, not {__name__}")

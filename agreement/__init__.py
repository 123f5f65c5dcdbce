"""Statistics: inter-annotator agreement, consensus, the judge audit, calibration and gold export."""

# This folder is installed as safereview.agreement (pyproject's package-dir); the bare name is
# refused so that code run from a checkout cannot import a second copy of it by accident.
if __name__ != "safereview.agreement":
    raise ImportError(f"import safereview.agreement, not {__name__}")

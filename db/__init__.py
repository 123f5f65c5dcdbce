"""Storage: SQLModel tables, engines and sessions, migrations, taxonomies."""

# This folder is installed as safereview.db (pyproject's package-dir); the bare name is
# refused so that code run from a checkout cannot import a second copy of it by accident.
if __name__ != "safereview.db":
    raise ImportError(f"import safereview.db, not {__name__}")

"""The Streamlit workbench: pages, media views and the server that hosts them."""

# This folder is installed as safereview.review_app (pyproject's package-dir); the bare name is
# refused so that code run from a checkout cannot import a second copy of it by accident.
if __name__ != "safereview.review_app":
    raise ImportError(f"import safereview.review_app, not {__name__}")

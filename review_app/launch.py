"""``python -m safereview.review_app.launch run review_app/asgi.py ...``: Streamlit's own CLI,
with the accepted-connection fix of :mod:`safereview.review_app.nodelay` and the message
coalescing of :mod:`safereview.review_app.coalesce` installed first.

Streamlit binds its listening socket before it imports the app module, so the fix must be
in place before Streamlit's CLI starts; ``safereview serve`` execs this module instead of
``python -m streamlit``. Everything after the module name is Streamlit's command line.
"""

from __future__ import annotations


def main() -> None:
    from safereview.review_app import coalesce, nodelay

    nodelay.install()
    coalesce.install()
    from streamlit.web.cli import main as streamlit_main

    streamlit_main(prog_name="streamlit")


if __name__ == "__main__":
    main()

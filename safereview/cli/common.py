"""Options and helpers every command shares (database URL, console output)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from safereview import settings

# Output is data (judge ids, model names, paths, error texts), never markup: with rich's
# defaults a judge id "uni-judger:llama:…" printed a llama emoji for ":llama:", "[parquet]"
# vanished as a style tag and "[redacted]" from an error text with it. Styles are passed as
# arguments (``style=``) or built with ``rich.text.Text`` instead.
console = Console(markup=False, emoji=False)
err_console = Console(stderr=True, markup=False, emoji=False)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL or SQLite file (default: $SAFEREVIEW_DB or sqlite:///safereview.db).",
        show_default=False,
    ),
]
MediaRootOption = Annotated[
    str | None,
    typer.Option(
        "--media-root",
        help="Media folder (default: $SAFEREVIEW_MEDIA_ROOT or beside the database).",
        show_default=False,
    ),
]


def principal():  # type: ignore[no-untyped-def]
    """This process's trusted, named caller for service functions (never ``None``)."""
    from safereview.workflow.principals import cli_principal

    return cli_principal()


def config(db: str | None = None, media_root: str | None = None) -> settings.Config:
    return settings.load(db_url=db, media_root_override=media_root)


def engine_for(cfg: settings.Config, *, init: bool = True):  # type: ignore[no-untyped-def]
    """An engine on an up-to-date schema (``init`` runs pending migrations)."""
    from safereview.db.engine import init_db, make_engine

    return init_db(cfg.db_url) if init else make_engine(cfg.db_url)

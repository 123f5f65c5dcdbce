"""Entry point of the ``safereview`` command."""

from __future__ import annotations

import typer

from safereview import __version__
from safereview.cli import admin, agreement_cmds, app_cmds, dataio_cmds, judge_cmds, review_cmds

app = typer.Typer(
    name="safereview",
    help="Human review of multimodal AI-safety judgments: import, judge, review, agree, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"safereview {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """safereview command line."""


for _group in (admin, dataio_cmds, judge_cmds, review_cmds, agreement_cmds, app_cmds):
    _group.register(app)

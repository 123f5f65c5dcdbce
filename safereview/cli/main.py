"""Entry point of the ``safereview`` command."""

from __future__ import annotations

import typer
from typer.core import TyperOption

from safereview import __version__
from safereview.cli import admin, agreement_cmds, app_cmds, dataio_cmds, judge_cmds, review_cmds

_type_column = TyperOption.display_type_rich


def _no_type_for_flags(self: TyperOption, ctx: object) -> str | None:
    """Typer 0.29 prints ``<bool>`` beside every on/off flag in --help, as if it took a value."""
    return None if self.is_flag else _type_column(self, ctx)  # type: ignore[arg-type]


TyperOption.display_type_rich = _no_type_for_flags  # type: ignore[method-assign]

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

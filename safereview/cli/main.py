"""Entry point of the ``safereview`` command."""

from __future__ import annotations

import inspect
import re

import typer
from typer.core import TyperArgument, TyperOption

from safereview import __version__
from safereview.cli import admin, agreement_cmds, app_cmds, dataio_cmds, judge_cmds, review_cmds

_LIST_TYPE = re.compile(r"<list\[(.+)\]>")


def _value_type(display_type_rich):  # type: ignore[no-untyped-def]
    """Typer 0.29's type column, made to say what one value on the command line is.

    It prints ``<bool>`` beside every on/off flag, as if it took a value (flags now show
    none), and ``<list[str]>`` beside a repeatable option or a variadic argument, as if it
    took a list in one go (now ``<str>``: the option is given again for each value).
    """

    def shown(self, ctx):  # type: ignore[no-untyped-def]
        if getattr(self, "is_flag", False):
            return None
        text = display_type_rich(self, ctx)
        if isinstance(text, str):
            text = _LIST_TYPE.sub(lambda m: f"<{m.group(1).lower()}>", text)
        return text

    return shown


TyperOption.display_type_rich = _value_type(TyperOption.display_type_rich)  # type: ignore[method-assign]
TyperArgument.display_type_rich = _value_type(TyperArgument.display_type_rich)  # type: ignore[method-assign]

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


def reflowed(text: str) -> str:
    """A docstring as --help should print it: each paragraph one line, for rich to wrap to the terminal.

    Typer 0.29 keeps a docstring's line breaks inside a paragraph, so a help text wrapped at
    the source's width came out ragged at any other width.
    """
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def _reflow_help(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.help is None and command.callback is not None and command.callback.__doc__:
            command.help = reflowed(command.callback.__doc__)
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        if isinstance(sub.info.help, str):
            sub.info.help = reflowed(sub.info.help)
        _reflow_help(sub)


for _group in (admin, dataio_cmds, judge_cmds, review_cmds, agreement_cmds, app_cmds):
    _group.register(app)
_reflow_help(app)

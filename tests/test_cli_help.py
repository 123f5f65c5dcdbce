"""Every CLI command and option is documented (``safereview --help`` is the manual)."""

from __future__ import annotations

import subprocess
import sys

import typer.main

from safereview.cli.main import app


def _walk(cmd, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    # Typer vendors its own click; walk the tree by duck typing.
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, (*path, name))


def test_every_command_and_option_has_help() -> None:
    root = typer.main.get_command(app)
    missing: list[str] = []
    seen = 0
    for path, cmd in _walk(root):
        seen += 1
        if path and not (cmd.help or cmd.short_help):
            missing.append(" ".join(path) + ": command has no help")
        for param in cmd.params:
            if param.param_type_name == "option" and not param.hidden and not param.help:
                missing.append(f"{' '.join(path) or 'safereview'} {param.opts[0]}: option has no help")
    assert seen > 1
    assert not missing, "\n".join(missing)


def test_help_runs_as_a_console_script_without_heavy_imports() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from safereview.cli.main import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('librosa', 'streamlit', 'av', 'pyarrow') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`safereview --help` imported heavy modules: {out.stdout.strip()}"


def test_flags_show_no_value_type_in_help() -> None:
    """An on/off flag takes no value, so --help shows no ``<bool>`` beside it; options that take one keep their type."""
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["judge", "--help"], env={"COLUMNS": "100"}).output
    assert "--dry-run" in out and "<bool>" not in out
    assert "<int" in out  # --concurrency still says what it takes


def test_help_paragraphs_are_reflowed_to_the_terminal() -> None:
    """A docstring's source line breaks do not reach --help: each paragraph wraps to the terminal's width.

    Typer 0.29 keeps them, so a paragraph came out with short lines wherever the source broke it.
    At 400 columns every paragraph fits on one line, so each must appear there whole.
    """
    from typer.testing import CliRunner

    root = typer.main.get_command(app)
    checked = 0
    for path, cmd in _walk(root):
        if not path or not cmd.help:
            continue
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        for paragraph in cmd.help.split("\n\n"):
            assert " ".join(paragraph.split()) in out, f"{' '.join(path)}: paragraph not on one line:\n{out}"
            checked += 1
        assert "``" not in out, f"{' '.join(path)}: reStructuredText quotes in --help"
    out = CliRunner().invoke(app, ["import", "--help"], env={"COLUMNS": "400"}).output
    assert "the command exits 1 with the database unchanged" in out
    assert checked >= 25


def test_repeatable_options_show_the_type_of_one_value() -> None:
    """A repeatable option (or a variadic argument) takes one value per use: ``<str>``, not ``<list[str]>``."""
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "150"}).output
    line = next(x for x in out.splitlines() if "--collection" in x)
    assert "<str>" in line and "list[" not in line
    out = CliRunner().invoke(app, ["import", "--help"], env={"COLUMNS": "150"}).output
    line = next(x for x in out.splitlines() if "paths..." in x)
    assert "<path>" in line and "list[" not in line

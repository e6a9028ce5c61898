"""`recserve --help` and every group's: each command's description is whole sentences, not its
docstring's hard line breaks (typer shows those as written, breaking a sentence mid-line)."""

from __future__ import annotations

from typer.testing import CliRunner

from recserve.cli import app


def _commands(t):
    yield from t.registered_commands
    for g in t.registered_groups:
        yield from _commands(g.typer_instance)


def test_every_command_help_has_no_line_break_inside_a_paragraph():
    helps = {c.callback.__name__: c.help for c in _commands(app)}
    assert len(helps) > 30
    broken = {name: h for name, h in helps.items() if not h or "\n" in h.replace("\n\n", "")}
    assert not broken, broken


def test_help_renders_each_description_wrapped_by_the_terminal_only():
    for args in (["--help"], ["region", "--help"]):
        res = CliRunner().invoke(app, args, env={"COLUMNS": "100"})
        assert res.exit_code == 0, res.output
        rows = [line.strip("│").rstrip() for line in res.output.splitlines() if line.startswith("│")]
        # a hard line break shows as a short row followed by more of the same description (a row
        # without a command name); the terminal's wrap fills a row first
        short = [a for a, b in zip(rows, rows[1:]) if len(a) < 60 and b.startswith("   ") and b.strip()]
        assert not short, res.output

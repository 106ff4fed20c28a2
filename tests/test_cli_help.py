"""Every command's ``--help`` reads as plain text: no ``<bool>`` after a flag (typer's rich
panels printed one for each), no period left alone after text the help formatter ate
(``[env …]`` read as markup), and the ``[…]`` hints shown."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from meterline.cli import app

STRAY_PERIOD = re.compile(r" \.(?:\s|$)", re.MULTILINE)


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):  # groups
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(get_command(app)))


def test_every_command_is_checked() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"", "serve", "invoice", "export", "finalize", "reprice", "prices update",
            "spool flush", "instrument"} <= names  # fmt: skip


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "meterline")
def test_help_has_no_bool_placeholder_and_no_stray_period(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "<bool>" not in text
    assert not STRAY_PERIOD.search(text), text
    assert "--help" in text


def test_bracketed_hints_survive() -> None:
    text = CliRunner().invoke(app, ["invoice", "--help"], env={"COLUMNS": "200"}).stdout
    assert "[env METERLINE_DATA_DIR]" in text and "[env METERLINE_CONFIG]" in text

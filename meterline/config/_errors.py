"""Validation errors as one line a person can act on: file, line, field path, fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from meterline.config._yaml import line_of
from meterline.errors import MeterlineError


class ConfigError(MeterlineError, ValueError):
    """The configuration file is missing, unreadable or invalid.

    ``str()`` is one line: the file (and line), the field and what to do. ``problems``
    lists every problem found, each in that form.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('models', 2, 'per_million_tokens', 'input')`` → ``models[2].per_million_tokens.input``."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and loc[i + 1 : i + 2] == ("[key]",):
            out += f".{part}"
        elif isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: ErrorDetails) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if error["loc"] and error["loc"][-1] == "[key]":
        return f"the key {_shown(value)} must be text: quote it"
    if kind == "missing":
        return "required: add it"
    if kind == "string_type":
        return f"expected text, got {_shown(value)}: quote it"
    if kind == "bool_type":
        return f"expected true or false, got {_shown(value)}"
    if kind == "int_type":
        return f"expected a whole number, got {_shown(value)}"
    if kind == "list_type":
        return f"expected a list (one `- ` entry per item), got {_shown(value)}"
    if kind == "dict_type":
        return f"expected a mapping, got {_shown(value)}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {_shown(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


def _where(error: ErrorDetails) -> tuple[int | str, ...]:
    loc = tuple(error["loc"])
    if error["type"] == "unknown_key":
        loc = (*loc, str((error.get("ctx") or {}).get("key")))
    return loc


def config_error(exc: ValidationError, *, path: Path | str, node: yaml.Node | None) -> ConfigError:
    """One :class:`ConfigError` for every problem of ``exc``, the first one in the message."""
    problems, names = [], []
    for error in exc.errors(include_url=False):
        loc = _where(error)
        line = line_of(node, loc)
        at = f"{path}:{line}" if line is not None else str(path)
        names.append(field_path(loc) or "the file")
        problems.append(f"{at}: {names[-1]}: {_message(error)}")
    message = problems[0]
    if len(problems) > 1:
        others = ", ".join(names[1:4])
        more = "" if len(problems) <= 4 else ", …"
        message += f" (and {len(problems) - 1} more: {others}{more})"
    return ConfigError(message, problems)

"""meterline's configuration file (``--config FILE`` / ``METERLINE_CONFIG``), validated.

Contract: :func:`load_config` reads the whole file and checks every section before
anything uses it; any problem is a :class:`ConfigError` whose message is one line naming
the file, the line, the field (``models[2].per_million_tokens.input``) and the fix.
Unknown keys are errors with a "did you mean" suggestion; values are not coerced (a YAML
float is not money, ``"yes"`` is not a boolean, a number is not text). An empty file is
valid and means every default. Sections are declared in :mod:`meterline.config._file`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meterline.config._base import Money, Section
from meterline.config._errors import ConfigError, field_path
from meterline.config._file import ConfigFile

__all__ = ["ConfigError", "ConfigFile", "Money", "Section", "field_path", "load_config",
           "validate_config"]  # fmt: skip


def validate_config(data: Any, *, path: str | Path = "the configuration") -> ConfigFile:
    """Check an already parsed document (a mapping of sections, or ``None``).

    Raises:
        ConfigError: the first problem in the message, all of them in ``problems``.
    """
    return _validate(data, path=path, node=None)


def _validate(data: Any, *, path: str | Path, node: Any) -> ConfigFile:
    from pydantic import ValidationError

    from meterline.config._errors import config_error

    try:
        currency = data.get("currency", "USD") if isinstance(data, dict) else "USD"
        return ConfigFile.model_validate(data, context={"currency": currency})
    except ValidationError as exc:
        raise config_error(exc, path=path, node=node) from None


def load_config(path: str | Path | None) -> ConfigFile:
    """Read and validate the file at ``path`` (``None``: every default).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML or invalid.
    """
    if path is None:
        return ConfigFile()
    from meterline.config._yaml import YAMLFileError, read_yaml

    try:
        data, node = read_yaml(Path(path))
    except YAMLFileError as exc:
        raise ConfigError(str(exc)) from None
    return _validate(data, path=path, node=node)

"""What every section of the configuration file is built from.

A section is a pydantic model that refuses unknown keys (with a "did you mean" taken
from its own field names) and does not coerce: text stays text, ``true``/``false`` are the
only booleans, and money is a :class:`~decimal.Decimal` read from a quoted string or a
whole number — never from a YAML float, whose binary value is not the decimal written.
"""

from __future__ import annotations

import difflib
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    """A mapping of the configuration file: known keys only, values of the declared type."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise PydanticCustomError(
                "section_type",
                "expected a mapping of {keys}, got {got}",
                {"keys": _keys(cls), "got": _kind(data)},
            )
        known = {name for name in cls.model_fields}
        for key in data:
            if key not in known:
                close = (
                    difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                    or [k for k in sorted(known) if str(key) and k.startswith(str(key))][:1]
                )
                hint = f"did you mean `{close[0]}`?" if close else f"allowed: {_keys(cls)}"
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key `{key}`: {hint}",
                    {"key": str(key), "hint": hint},
                )
        return data


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"{value!r}"


def _money(value: Any) -> Decimal:
    if isinstance(value, float):
        raise PydanticCustomError(
            "money_float",
            "{value} is a YAML float, and binary floats are not exact money: "
            'quote it as a decimal string ("{value}")',
            {"value": repr(value)},
        )
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise PydanticCustomError(
            "money_type", 'expected an amount as a quoted decimal string such as "2.50"', {}
        )
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise PydanticCustomError(
            "money_syntax", '{value} is not a decimal amount such as "2.50"', {"value": repr(value)}
        ) from None
    if not amount.is_finite() or amount < 0:
        raise PydanticCustomError(
            "money_range", "{value} must be a finite, non-negative amount", {"value": repr(value)}
        )
    return amount


Money = Annotated[Decimal, BeforeValidator(_money)]
"""A non-negative decimal amount: a quoted decimal string or a whole number."""


def none_as_empty_list(value: Any) -> Any:
    """``key:`` with nothing after it is an empty list (as the file has always meant)."""
    return [] if value is None else value


def none_as_empty_dict(value: Any) -> Any:
    """``key:`` with nothing after it is an empty mapping."""
    return {} if value is None else value

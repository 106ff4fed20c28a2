"""One API request as a handler sees it: its parameters, its account, the stand-in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meterline.stripe_standin._errors import invalid_request, missing, unknown
from meterline.stripe_standin._state import Standin


@dataclass
class Call:
    standin: Standin
    params: dict[str, Any]
    path_params: dict[str, str]
    api_mode: str
    """``v1`` (form-encoded) or ``v2`` (JSON)."""
    livemode: bool
    now: float

    def only(self, allowed: Iterable[str]) -> None:
        """Refuse parameters the endpoint does not take, as Stripe does."""
        allowed = set(allowed) | {"expand"}
        for name in self.params:
            if name not in allowed:
                raise unknown(name)

    def string(self, name: str, *, required: bool = False, max_length: int = 5000) -> str | None:
        value = self.params.get(name)
        if value is None:
            if required:
                raise missing(name)
            return None
        if not isinstance(value, str):
            raise invalid_request(f"Invalid string: {value!r}", param=name)
        if required and value == "":
            raise invalid_request(
                f"You passed an empty string for '{name}'. We assume empty values are an "
                "attempt to unset a parameter; however '{name}' cannot be unset. You should "
                f"remove '{name}' from your request or supply a non-empty value.",
                param=name,
                code="parameter_invalid_empty",
            )
        if len(value) > max_length:
            raise invalid_request(
                f"Invalid string: {value[:20]}...; must be at most {max_length} characters",
                param=name,
            )
        return value

    def integer(self, name: str, *, required: bool = False) -> int | None:
        value = self.params.get(name)
        if value is None:
            if required:
                raise missing(name)
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise invalid_request(f"Invalid integer: {value!r}", param=name)
        text = str(value).strip()
        if not text.lstrip("-").isdigit():
            raise invalid_request(
                f"Invalid integer: {value}", param=name, code="parameter_invalid_integer"
            )
        return int(text)

    def hash(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self.params.get(name)
        if value is None or value == "":
            if required:
                raise missing(name)
            return None
        if not isinstance(value, dict):
            raise invalid_request(f"Invalid object: {name} must be a hash", param=name)
        return value

"""Decode Stripe's v1 request encoding: ``application/x-www-form-urlencoded`` with brackets.

The SDK encodes nested dicts as ``payload[value]=25`` and lists as ``expand[0]=x`` (Stripe
also accepts ``expand[]=x``). Values stay strings, as Stripe receives them; each endpoint
converts and checks its own parameters.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from meterline.stripe_standin._errors import invalid_request

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(isinstance(k, int) for k in node):
            return [_listify(node[k]) for k in sorted(node)]
        return {k: _listify(v) for k, v in node.items()}
    return node


def decode(body: str) -> dict[str, Any]:
    """Nested parameters of a form body (or a query string).

    Raises:
        StripeFailure: a key that is not well-formed, or one that is both a value and a hash.
    """
    root: dict[Any, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True, strict_parsing=False):
        match = _KEY.match(raw_key)
        if match is None:
            raise invalid_request(f"Invalid parameter name: {raw_key}", param=raw_key)
        parts: list[Any] = [match.group(1)]
        parts += [p[1:-1] for p in re.findall(r"\[[^\[\]]*\]", match.group(2))]
        node: dict[Any, Any] = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                part = len(node)  # ``a[]=x``: append
            elif part.isdigit() and i > 0:
                part = int(part)
            if last:
                if isinstance(node.get(part), dict):
                    raise invalid_request(f"Invalid hash: {raw_key}", param=raw_key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise invalid_request(f"Invalid hash: {raw_key}", param=raw_key)
                node = child
    return _listify(root)

"""Query-parameter types shared by the routers.

``From``, ``To`` and ``At`` are the time parameters: ISO 8601 only, in UTC, inside what
the store holds (:mod:`meterline.aggregator._instants`); anything else is a 422 naming
the parameter, never a 500 from a query the engine cannot run.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator

from meterline.aggregator._instants import check_instant, parse_instant


def _instant(name: str) -> Callable[[Any], datetime]:
    def validate(value: Any) -> datetime:
        if isinstance(value, datetime):
            return check_instant(value, name=name)
        return parse_instant(value, name=name)

    return validate


From = Annotated[datetime, BeforeValidator(_instant("'from'"))]
"""``from``: inclusive start, UTC."""
To = Annotated[datetime, BeforeValidator(_instant("'to'"))]
"""``to``: exclusive end, UTC."""
At = Annotated[datetime, BeforeValidator(_instant("'at'"))]
"""``at``: an instant, UTC."""

"""A panel's SQL expanded the way Grafana and its ClickHouse plugin expand it.

Ported from the sources, in their order (grafana/clickhouse-datasource at 1d04063a,
grafana/macropro ``parser.go``):

1. the plugin's frontend, ``CHDatasource.applyTemplateVariables`` (src/data/CHDatasource.ts):
   ``applyConditionalAll`` — from the last ``$__conditionalAll(`` back, arguments split by
   ``getMacroArgs`` (commas at depth 1, no notion of quotes), the call replaced by
   ``1=1`` when the variable's ``current.value.toString()`` is ``''`` or ``'$__all'``,
   else by its first argument; then ``templateSrv.replace(sql, scopedVars, this.format)``:
   ``$var`` / ``${var}`` / ``${var:fmt}`` of known variables, ``$__all`` standing for
   every option, the plugin's format (an array → ``'a','b'``, unescaped; a string as is)
   unless the reference names one (``singlequote``: each value quoted, ``'`` → ``\\'``,
   joined by ``,``), unknown names (``$__timeFilter`` …) left alone;
2. the plugin's backend, ``pkg/macros/macros.go`` through macropro: comments blanked,
   macro names matched longest first and as whole names, arguments split at top-level
   commas outside quoted strings and trimmed: ``$__fromTime`` → ``toDateTime(<from s>)``,
   ``$__toTime``, ``$__timeFilter(c)`` → ``c >= toDateTime(f) AND c <= toDateTime(t)``,
   ``$__timeInterval(c)`` → ``toStartOfInterval(toDateTime(c), INTERVAL n second)``,
   ``$__interval_s`` → ``n`` (the query interval in whole seconds, at least 1), and the
   ``_ms`` variants, ``$__dateFilter``, ``$__timeFrom``/``$__timeTo``, ``$__timeGroup``.
   Unknown macros are left in place (the engine then refuses the SQL: a test sees it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

ALL = "$__all"


@dataclass
class Variables:
    """The dashboard's variables as Grafana holds them: ``current`` per name (a list for a
    multi-value variable, a string otherwise) and each query variable's options."""

    current: dict[str, list[str] | str]
    options: dict[str, list[str]] = field(default_factory=dict)


def _macro_args(query: str, args_index: int) -> list[str]:
    """``getMacroArgs``: from the ``(`` at ``args_index``."""
    args: list[str] = []
    bracket = 0
    last = 1
    sub = query[args_index:]
    for m in re.finditer(r"\(|\)|,", sub):
        node = m.group(0)
        if node == "(":
            bracket += 1
        elif node == ")":
            bracket -= 1
        if node == "," and bracket == 1:
            args.append(sub[last : m.end() - 1])
            last = m.end()
        if bracket == 0:
            args.append(sub[last : m.end() - 1])
            return args
    return []


def _js_string(value: list[str] | str) -> str:
    return ",".join(value) if isinstance(value, list) else value


def apply_conditional_all(sql: str, variables: Variables) -> str:
    macro = "$__conditionalAll("
    index = sql.rfind(macro)
    while index != -1:
        params = _macro_args(sql, index + len(macro) - 1)
        if len(params) != 2:
            return sql
        m = re.search(r"(?<=\$\{)[\w\d]+(?=\})|(?<=\$)[\w\d]+", params[1].strip())
        phrase = params[0]
        if m:
            value = variables.current.get(m.group(0))
            text = "" if value is None else _js_string(value)
            if text in ("", ALL):
                phrase = "1=1"
        sql = sql.replace(f"{macro}{params[0]},{params[1]})", phrase, 1)
        index = sql.rfind(macro)
    return sql


_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}"
)


def _singlequote(value: list[str] | str) -> str:
    values = value if isinstance(value, list) else [value]
    return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)


def _plugin_format(value: list[str] | str) -> str:
    return "'" + "','".join(value) + "'" if isinstance(value, list) else value


def template_replace(sql: str, variables: Variables) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name not in variables.current:
            return m.group(0)
        value = variables.current[name]
        if value == ALL or value == [ALL]:
            value = list(variables.options[name])
        if fmt is None:
            return _plugin_format(value)
        if fmt == "singlequote":
            return _singlequote(value)
        raise AssertionError(f"format {fmt!r} is not ported")

    return _VARIABLE.sub(replace, sql)


def frontend(sql: str, variables: Variables) -> str:
    """What the plugin's frontend sends its backend."""
    return template_replace(apply_conditional_all(sql, variables), variables)


def _strip_comments(sql: str) -> str:
    out, i = [], 0
    while i < len(sql):
        if sql[i] in "'\"":
            quote, j = sql[i], i + 1
            while j < len(sql):
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == quote:
                    j += 1
                    break
                j += 1
            out.append(sql[i:j])
            i = j
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = len(sql) if j == -1 else j
            out.append(" " * (j - i))
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = len(sql) if j == -1 else j + 2
            out.append(" " * (j - i))
            i = j
        else:
            out.append(sql[i])
            i += 1
    return "".join(out)


def _closing_paren(s: str) -> int:
    depth, i = 0, 0
    while i < len(s):
        c = s[i]
        if c in "'\"":
            j = i + 1
            while j < len(s):
                if s[j] == c:
                    if j + 1 < len(s) and s[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _split_args(raw: str) -> list[str]:
    raw = raw.strip()
    if not raw:
        return []
    args, depth, start, i = [], 0, 0, 0
    while i < len(raw):
        c = raw[i]
        if c in "'\"":
            j = i + 1
            while j < len(raw) and raw[j] != c:
                j += 1
            i = j + 1
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(raw[start:i].strip())
            start = i + 1
        i += 1
    args.append(raw[start:].strip())
    return args


@dataclass(frozen=True)
class QueryContext:
    """The time range (``[start, end]`` as Grafana sends it) and the query interval."""

    start: datetime
    end: datetime
    interval_s: float = 3600.0


def _macros(ctx: QueryContext) -> dict[str, object]:
    f, t = int(ctx.start.timestamp()), int(ctx.end.timestamp())
    fm, tm = int(ctx.start.timestamp() * 1000), int(ctx.end.timestamp() * 1000)
    n = int(max(ctx.interval_s, 1))
    ms = int(max(ctx.interval_s * 1000, 1))

    def one(fn):  # type: ignore[no-untyped-def]
        def call(args: list[str]) -> str:
            assert len(args) == 1, args
            return fn(args[0])

        return call

    def group(args: list[str]) -> str:
        col, period = args[0], args[1].strip("'\"")
        units = {"s": 1, "m": 60, "h": 3600}
        return f"toStartOfInterval(toDateTime({col}), INTERVAL {int(period[:-1]) * units[period[-1]]} second)"

    def date(ts: datetime) -> str:
        return f"toDate('{ts.astimezone(UTC):%Y-%m-%d}')"

    return {
        "timeFilter": one(lambda c: f"{c} >= toDateTime({f}) AND {c} <= toDateTime({t})"),
        "timeFilter_ms": one(lambda c: f"{c} >= fromUnixTimestamp64Milli({fm})"
                                       f" AND {c} <= fromUnixTimestamp64Milli({tm})"),
        "timeFrom": one(lambda c: f"{c} >= toDateTime({f})"),
        "timeTo": one(lambda c: f"{c} <= toDateTime({t})"),
        "dateFilter": one(lambda c: f"{c} >= {date(ctx.start)} AND {c} <= {date(ctx.end)}"),
        "timeInterval": one(lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {n} second)"),
        "timeInterval_ms": one(lambda c: f"toStartOfInterval(toDateTime64({c}, 3),"
                                         f" INTERVAL {ms} millisecond)"),
        "timeGroup": group,
        "fromTime": lambda args: f"toDateTime({f})",
        "toTime": lambda args: f"toDateTime({t})",
        "fromTime_ms": lambda args: f"fromUnixTimestamp64Milli({fm})",
        "toTime_ms": lambda args: f"fromUnixTimestamp64Milli({tm})",
        "interval_s": lambda args: str(n),
    }  # fmt: skip


def backend(sql: str, ctx: QueryContext) -> str:
    """What the plugin's backend sends ClickHouse."""
    sql = _strip_comments(sql)
    macros = _macros(ctx)
    for name in sorted(macros, key=lambda n: (-len(n), n)):
        token = "$__" + name
        out, s = [], sql
        while (idx := s.find(token)) != -1:
            after = idx + len(token)
            if after < len(s) and (s[after].isalnum() or s[after] == "_"):
                out.append(s[:after])
                s = s[after:]
                continue
            out.append(s[:idx])
            s = s[after:]
            raw = ""
            if s.startswith("("):
                end = _closing_paren(s)
                if end != -1:
                    raw, s = s[1:end], s[end + 1 :]
            out.append(macros[name](_split_args(raw)))  # type: ignore[operator]
        out.append(s)
        sql = "".join(out)
    return sql


def expand(sql: str, variables: Variables, ctx: QueryContext) -> str:
    """Frontend, then backend: the SQL ClickHouse receives."""
    return backend(frontend(sql, variables), ctx)

"""What a read-only request may run, decided on the engine's own parse of it.

The endpoint's read-only sessions run with ``readonly = 1``, so the engine itself refuses
writes, DDL, ``SYSTEM``, ``OPTIMIZE``, ``ATTACH``, settings changes and table functions
in queries. Checked on chdb 26.9, ``readonly = 1`` does *not* stop:

- the scalar function ``file()`` (it reads any path: clickhouse-local skips the
  ``user_files_path`` check);
- ``INTO OUTFILE`` (clickhouse-local writes it on its client side);
- ``DESCRIBE TABLE <table function>`` and other paths that build a table function's
  structure without the access check (schema inference reads files, opens URLs);
- ``KILL QUERY`` (every chdb session is user ``default``: it could kill the collector's
  inserts);
- ``BACKUP`` (it is not a "write" to readonly; ``TO S3(...)`` would send data out).

So the request's text is parsed by the engine, and the parse tree is checked here. No
text of the request is lexed by meterline:

- ``formatQuery`` parses it (one statement only: multi-statements are a syntax error)
  and prints the engine's own formatting, which is what then runs;
- ``parseQueryToJSON`` gives that formatting's full tree (function names, ``APPLY``
  transformers, ``SHOW ... WHERE`` expressions, ``out_file``); :func:`check_tree` allows
  the read statements (:data:`TREE_KINDS`), no ``INTO OUTFILE``, and no call of a
  function in the denied set, wherever it appears;
- statements ``parseQueryToJSON`` does not serialise (``DESCRIBE``, ``EXISTS``,
  ``SHOW CREATE``, ``SHOW PROCESSLIST``...) are checked on ``EXPLAIN AST`` by
  :func:`check_explain`, which allows only the kinds in :data:`EXPLAIN_KINDS` whose dump
  holds nothing but identifiers (``EXPLAIN AST`` does not print every member of every
  node, e.g. ``SHOW ... WHERE``, so it is trusted only for kinds whose members are names).

The denied set is every table function the engine knows (``system.table_functions``)
except :data:`SAFE_TABLE_FUNCTIONS` (generators and readers of the engine's own tables),
plus the scalar functions that reach outside: ``file`` and the ``AI`` category (LLM
calls), with every alias (``system.functions.alias_to``). Names compare case-
insensitively (over-refusing a case-sensitive name costs nothing).

Known limits: ``EXPLAIN``, ``CHECK`` and other statements are refused (as before);
a string literal whose bytes are not UTF-8 (``'\\xFF'``) cannot be re-sent and is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from meterline.clickhouse_http._errors import ClickHouseError

SAFE_TABLE_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateSeries",
        "primes",
        "values",
        "null",
        "view",
        "viewIfPermitted",
        "merge",
        "format",
        "generateRandom",
        "loop",
        "SQLStandardValues",
        "mergeTreeIndex",
        "mergeTreeProjection",
    )
)
"""Table functions that only generate data or read the engine's own tables."""

OUTSIDE_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        # reach files, the network or the process (the floor if the engine's list fails)
        "file", "fileCluster", "filesystem", "url", "urlCluster", "s3", "s3Cluster", "gcs",
        "oss", "cosn", "hdfs", "hdfsCluster", "azureBlobStorage", "azureBlobStorageCluster",
        "remote", "remoteSecure", "cluster", "clusterAllReplicas", "mysql", "postgresql",
        "sqlite", "mongodb", "redis", "odbc", "jdbc", "executable", "input", "python",
        "arrowstream", "eval", "bigquery", "ytsaurus", "dictionary",
        # scalar: LLM calls, and a serial generator that writes to Keeper
        "aiGenerate", "aiClassify", "aiEmbed", "aiExtract", "aiFilter", "aiRedact",
        "aiSimilarity", "aiTranslate", "generateSerialID",
    )
)  # fmt: skip
"""Functions refused even if the engine's catalogue cannot be read."""

TREE_KINDS = frozenset(
    {"SelectWithUnionQuery", "SelectIntersectExceptQuery", "ShowTablesQuery",
     "ShowColumnsQuery", "ShowIndexesQuery"}
)  # fmt: skip
"""Root node types (``parseQueryToJSON``) of the statements a read-only request may run."""

EXPLAIN_KINDS = frozenset(
    {"DescribeQuery", "ExistsTableQuery", "ExistsDatabaseQuery", "ExistsViewQuery",
     "ExistsDictionaryQuery", "ShowCreateTableQuery", "ShowCreateDatabaseQuery",
     "ShowCreateViewQuery", "ShowCreateDictionaryQuery", "ShowProcesslistQuery",
     "ShowFunctions", "ShowEngineQuery", "ShowSetting"}
)  # fmt: skip
"""Root node types (``EXPLAIN AST``) allowed when their dump holds only identifiers."""

CATALOGUE_SQL = (
    "SELECT lower(name) FROM system.table_functions "
    "UNION ALL SELECT lower(name) FROM system.functions WHERE categories = 'AI'"
)
ALIASES_SQL = "SELECT lower(name), lower(alias_to) FROM system.functions WHERE alias_to != ''"


def denied_functions(
    catalogue: Iterable[str], aliases: Iterable[tuple[str, str]]
) -> frozenset[str]:
    """Lower-case names refused in read-only requests (see the module docstring)."""
    denied = {name for name in catalogue if name not in SAFE_TABLE_FUNCTIONS}
    denied |= OUTSIDE_FUNCTIONS
    alias_pairs = list(aliases)
    denied |= {alias for alias, target in alias_pairs if target in denied}
    return frozenset(denied)


@dataclass(frozen=True)
class Plan:
    """A statement the read-only endpoint will run."""

    kind: str
    """The engine's root node type (``SelectWithUnionQuery``, ``DescribeQuery``...)."""
    sql: str
    """The engine's formatting of the statement: the text that runs."""
    format: str | None
    """The name in its ``FORMAT`` clause, if any."""


def refused(what: str) -> ClickHouseError:
    return ClickHouseError(
        "READONLY", f"meterline: Cannot execute query in readonly mode: {what} on this endpoint"
    )


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_tree(tree: dict[str, Any], sql: str, *, denied: frozenset[str]) -> Plan:
    """Allow a read statement with no ``INTO OUTFILE`` and no denied function.

    Raises:
        ClickHouseError: READONLY.
    """
    kind = str(tree.get("type", ""))
    if kind not in TREE_KINDS:
        raise refused(f"{kind or 'this'} statements are not allowed")
    for node in _nodes(tree):
        if "out_file" in node or node.get("is_into_outfile_with_stdout"):
            raise refused("INTO OUTFILE is not allowed")
        names = [node.get("func_name"), node.get("function_name")]
        if node.get("type") == "Function":
            names.append(node.get("name"))
        for name in names:
            if isinstance(name, str) and name.lower() in denied:
                raise refused(
                    f"function {name} reads or writes outside the database and is not allowed"
                )
    fmt = tree.get("format_ast")
    name = fmt.get("name") if isinstance(fmt, dict) and fmt.get("type") == "Identifier" else None
    return Plan(kind, sql, name if isinstance(name, str) else None)


def check_explain(lines: list[str], sql: str, *, has_format: bool) -> Plan:
    """Allow an :data:`EXPLAIN_KINDS` statement whose ``EXPLAIN AST`` is only names.

    ``has_format``: whether the statement has a ``FORMAT`` clause (then its name is the
    root's last identifier child).

    Raises:
        ClickHouseError: READONLY.
    """
    kind = lines[0].split(" ", 1)[0] if lines else ""
    if kind not in EXPLAIN_KINDS:
        raise refused(f"{kind or 'this'} statements are not allowed")
    body = lines[1:]
    if kind == "DescribeQuery":
        if (
            body[:1] != [" TableExpression (children 1)"]
            or not body[1:2]
            or not body[1].startswith("  TableIdentifier ")
        ):
            raise refused("DESCRIBE of anything but a table is not allowed")
        body = body[2:]
    if any(not line.startswith(" Identifier ") or line.endswith(")") for line in body):
        raise refused(f"this form of {kind} is not allowed")
    fmt = body[-1].removeprefix(" Identifier ") if has_format and body else None
    return Plan(kind, sql, fmt)

"""Just enough of ClickHouse's lexer to split a *writable* request before it runs.

Not a security boundary: read-only requests never pass through this module (the engine
parses them, see ``_policy``). The writable mode (tests, migrations through
clickhouse-connect) needs, before the engine sees a request, where an ``INSERT``'s inline
data begins (the engine must not parse ``FORMAT Native`` bytes as SQL), the statement's
kind (whether it produces a result) and its ``FORMAT`` clause. It tokenizes the way
ClickHouse's ``Lexer`` does for the ASCII syntax clients send: whitespace, ``--``/``#``
line comments, nested ``/* */`` comments, ``'strings'`` with backslash escapes and
doubled quotes, ``"quoted"``/```quoted``` identifiers, ``$tag$`` heredocs, numbers, words
and punctuation.

Text is lexed as latin-1 so that offsets are byte offsets and an INSERT's binary data
(``FORMAT Native``) is never decoded: the lexer stops where the data begins.

Known limits: this is a classifier, not a parser, and it does not know every token
ClickHouse accepts (typographic quotes, Unicode whitespace); a statement it misreads
fails in the engine or runs as the trusted writable client sent it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meterline.clickhouse_http._errors import ClickHouseError

RESULT_KINDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK"}
)
"""First keywords of the statements that produce a result set (an ``X-ClickHouse-Format``)."""

_WS = " \t\n\r\f\v"
_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD_CHARS = _WORD_START | frozenset("0123456789$")
_HEREDOC_TAG = _WORD_CHARS - {"$"}


@dataclass(frozen=True)
class Token:
    kind: str
    """``word``, ``qident`` (quoted identifier), ``string``, ``number`` or ``punct``."""
    start: int
    end: int
    text: str

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def ident(self) -> str:
        """The identifier this token names (unquoted), or ``""``."""
        if self.kind == "word":
            return self.text
        if self.kind == "qident":
            return self.text[1:-1]
        return ""


def _syntax(message: str) -> ClickHouseError:
    return ClickHouseError("SYNTAX_ERROR", f"Syntax error: {message}")


def tokens(text: str, start: int = 0) -> Iterator[Token]:
    """Yield the significant tokens of ``text`` from offset ``start``."""
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c in _WS:
            i += 1
        elif text.startswith("--", i) or c == "#":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while depth and j < n:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise _syntax(f"unterminated multiline comment at position {i + 1}")
            i = j
        elif c in "'\"`":
            j = i + 1
            while True:
                if j >= n:
                    raise _syntax(f"unterminated quoted text at position {i + 1}")
                if text[j] == "\\":
                    j += 2
                elif text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                    else:
                        break
                else:
                    j += 1
            yield Token("string" if c == "'" else "qident", i, j + 1, text[i : j + 1])
            i = j + 1
        elif c == "$" and (heredoc := _heredoc_end(text, i)) is not None:
            yield Token("string", i, heredoc, text[i:heredoc])
            i = heredoc
        elif c in _WORD_START:
            j = i + 1
            while j < n and text[j] in _WORD_CHARS:
                j += 1
            yield Token("word", i, j, text[i:j])
            i = j
        elif c.isdigit():
            j = i + 1
            while j < n and (text[j] in _WORD_CHARS or text[j] == "."):
                j += 1
            yield Token("number", i, j, text[i:j])
            i = j
        else:
            yield Token("punct", i, i + 1, c)
            i += 1


def _heredoc_end(text: str, i: int) -> int | None:
    j = i + 1
    while j < len(text) and text[j] in _HEREDOC_TAG:
        j += 1
    if j >= len(text) or text[j] != "$":
        return None
    tag = text[i : j + 1]
    close = text.find(tag, j + 1)
    if close < 0:
        raise _syntax(f"unterminated heredoc at position {i + 1}")
    return close + len(tag)


@dataclass(frozen=True)
class InsertData:
    """An INSERT whose rows follow the statement (``FORMAT x`` or ``VALUES``)."""

    head: str
    """The statement up to (not including) its top-level SETTINGS clause, if any."""
    settings: str
    """The statement's ``SETTINGS ...`` clause before the data, or ``""``."""
    format: str
    """The data's format name (``Values`` for a ``VALUES`` insert)."""
    data_offset: int
    """Offset in the request text where the data begins."""


@dataclass(frozen=True)
class Statement:
    """What the endpoint needs to know about one statement."""

    kind: str
    """Its first keyword, upper case (``SELECT``, ``INSERT``, ...)."""
    text: str
    """The statement without trailing semicolons (for an INSERT with data: up to the data)."""
    format: str | None
    """The name in its ``FORMAT`` clause, if any."""
    insert: InsertData | None
    """Set for an INSERT that carries its data inline."""
    tokens: tuple[Token, ...]
    """Its significant tokens (for an INSERT with data: those before the data)."""

    @property
    def produces_result(self) -> bool:
        return self.kind in RESULT_KINDS


def parse(text: str) -> Statement:
    """Classify the single statement in ``text``.

    Raises:
        ClickHouseError: SYNTAX_ERROR for an empty query, unterminated quotes or
            comments, unbalanced parentheses, or more than one statement.
    """
    toks: list[Token] = []
    depth = 0
    kind = ""
    end_of_statement: int | None = None
    insert_select = False
    for tok in tokens(text):
        if end_of_statement is not None:
            if tok.text == ";":
                continue
            raise _syntax(f"Multi-statements are not allowed: failed at position {tok.start + 1}")
        if tok.text == ";" and depth == 0:
            end_of_statement = tok.start
            continue
        toks.append(tok)
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
            if depth < 0:
                raise _syntax(f"unbalanced parentheses at position {tok.start + 1}")
        if not kind and tok.kind == "word":
            kind = tok.upper
        if kind == "INSERT" and depth == 0 and tok.upper in ("SELECT", "WITH"):
            insert_select = True
        if kind == "INSERT" and not insert_select and depth == 0 and len(toks) >= 2:
            insert = _insert_data(text, toks)
            if insert is not None:
                head = text[: insert.data_offset]
                return Statement(kind, head, insert.format, insert, tuple(toks))
    if not toks:
        raise _syntax("Empty query")
    if depth:
        raise _syntax("unbalanced parentheses")
    if not kind:
        raise _syntax(f"failed at position {toks[0].start + 1}")
    body = text[:end_of_statement] if end_of_statement is not None else text
    return Statement(kind, body.rstrip(), _format_clause(toks), None, tuple(toks))


def _insert_data(text: str, toks: list[Token]) -> InsertData | None:
    """If the last token completes ``FORMAT name`` or ``VALUES``, where the data begins."""
    last = toks[-1]
    if last.upper == "VALUES":
        head_end = last.start
        fmt = "Values"
        data = last.end
        while data < len(text) and text[data] in _WS:
            data += 1
    elif len(toks) >= 2 and toks[-2].upper == "FORMAT" and last.ident:
        head_end = toks[-2].start
        fmt = last.ident
        data = last.end
        while data < len(text) and text[data] in " \t\f":
            data += 1
        if text.startswith("\r", data):
            data += 1
        if text.startswith("\n", data):
            data += 1
    else:
        return None
    head_toks = [t for t in toks if t.end <= head_end]
    settings_at = next(
        (t.start for t in head_toks if t.upper == "SETTINGS" and _depth_at(head_toks, t) == 0),
        None,
    )
    if settings_at is None:
        return InsertData(text[:head_end].rstrip(), "", fmt, data)
    return InsertData(text[:settings_at].rstrip(), text[settings_at:head_end].rstrip(), fmt, data)


def _depth_at(toks: list[Token], target: Token) -> int:
    depth = 0
    for tok in toks:
        if tok is target:
            return depth
        depth += tok.text == "("
        depth -= tok.text == ")"
    return depth


def _format_clause(toks: list[Token]) -> str | None:
    """The last top-level ``FORMAT name`` that ends the statement or precedes SETTINGS."""
    depth = 0
    found = None
    for i, tok in enumerate(toks):
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
        elif depth == 0 and tok.upper == "FORMAT" and i + 1 < len(toks) and toks[i + 1].ident:
            after = toks[i + 2] if i + 2 < len(toks) else None
            if after is None or after.upper == "SETTINGS":
                found = toks[i + 1].ident
    return found

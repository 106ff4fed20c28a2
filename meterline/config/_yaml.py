"""Reading the configuration file's YAML: one-line errors, duplicate keys refused, positions.

PyYAML keeps the last of two equal keys silently (a second ``models:`` would drop the
first list), so duplicates are an error here. Besides the data, the composed node tree is
returned so a validation error can name the line of the offending value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (``<<`` merges allowed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {first.start_mark.line + 1}): "
                    "keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _timestamp(loader: _Loader, node: yaml.ScalarNode) -> Any:
    """A timestamp-looking scalar that is no real date (``2026-02-30``) stays text, so
    validation names its field and line instead of PyYAML failing without either."""
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


class YAMLFileError(ValueError):
    """The file cannot be read or is not YAML; ``str()`` is one line naming the file."""


def _one_line(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        return f"{where}{problem}{context}"
    return " ".join(str(exc).split())


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The document at ``path`` and its node tree (``None`` for an empty document).

    Raises:
        YAMLFileError: unreadable, not UTF-8, not YAML, a duplicate key, or several
            documents.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise YAMLFileError(f"{path}: is a directory, not a configuration file") from None
    except FileNotFoundError:
        raise YAMLFileError(f"{path}: no such file: check the --config path") from None
    except OSError as exc:
        raise YAMLFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise YAMLFileError(
            f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise YAMLFileError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    return data, node


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the value at ``loc`` (pydantic's error location), if found.

    A location that runs past the tree (a missing key) gives the deepest node found.
    """
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    child = value_node
                    line = key_node.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line

"""Safe YAML that remembers line numbers, so spec errors can say `spec.yaml:12: layers[3].groups`."""

from __future__ import annotations

from typing import Any

import yaml

_ALIAS_LIMIT = 1000


class LineDict(dict):
    """A mapping that knows the line of each of its keys (1-based) and its own first line."""

    line: int = 0
    key_lines: dict


class LineList(list):
    """A sequence that knows the line of each item and its own first line."""

    line: int = 0
    item_lines: list


class DuplicateKeyError(yaml.MarkedYAMLError):
    pass


class MergeKeyError(yaml.MarkedYAMLError):
    """A merge key (`<<: *anchor`) where the document must spell out each key."""


_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present: ~10× faster


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """A safe loader plus line numbers, duplicate-key errors and a cap on alias use."""

    def __init__(self, stream: str, merge_keys: bool = True) -> None:
        super().__init__(stream)
        self.aliases_seen = 0
        self.merge_keys = merge_keys

    def construct_object(self, node, deep=False):  # type: ignore[override]
        if node in self.constructed_objects:  # reached again: an alias
            self.aliases_seen += 1
            if self.aliases_seen > _ALIAS_LIMIT:
                raise yaml.constructor.ConstructorError(None, None, f"more than {_ALIAS_LIMIT} aliases",
                                                        node.start_mark)
        return super().construct_object(node, deep)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    if not loader.merge_keys:
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise MergeKeyError(None, None, "a merge key (<<)", key_node.start_mark)
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "keys must be plain scalars", key_node.start_mark)
        if key in result:
            raise DuplicateKeyError(
                None, None, f"duplicate key {key!r} (first on line {result.key_lines[key]})", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    """An int, or a YAML error at its line: Python refuses to convert more than 4300 digits (ValueError),
    which would otherwise escape as an internal error."""
    try:
        return loader.construct_yaml_int(node)
    except ValueError:
        raise yaml.constructor.ConstructorError(None, None, f"a number has too many digits ({len(node.value)})",
                                                node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load(text: str, merge_keys: bool = True) -> Any:
    """Parse one YAML document. Raises yaml.YAMLError (with a problem_mark) on bad input; MergeKeyError for a
    `<<` key unless `merge_keys`."""
    loader = _Loader(text, merge_keys)
    try:
        return loader.get_single_data()
    except (ValueError, RecursionError) as error:  # a 5000-digit integer, a date like 2024-02-30
        raise yaml.constructor.ConstructorError(None, None, _scalar_problem(error), None) from None
    finally:
        loader.dispose()


def _scalar_problem(error: BaseException) -> str:
    """A constructor's own error as a short phrase (Python's digit limit says a lot more)."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if "digits" in str(error):
        return "a number has too many digits"
    return f"a value cannot be read ({' '.join(str(error).split())[:80]})"

"""The YAML document of a config file, read safely and within bounds, or one problem saying why
it cannot be read: a file that is too large, not text, not YAML, nested too deep, or made huge or
endless by aliases. Nothing else escapes, whatever the bytes."""

from __future__ import annotations

from typing import Any

import yaml

# Limits on what is read at all. A config is a few hundred lines nested a handful of levels; past
# these it is not a config (or is an attack: a deep nest, an alias "billion laughs"), and reading
# it would cost unbounded time, memory or stack.
MAX_FILE_SIZE = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 50_000  # every value (and key) once per place it appears, aliases expanded


class UnreadableDocument(Exception):
    """The file as a whole cannot be read; ``problem`` says why (and where, if it can)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def read_document(text: bytes) -> Any:
    """The document's plain data (None for an empty file), or UnreadableDocument."""
    if len(text) > MAX_FILE_SIZE:
        raise UnreadableDocument(
            f"the file is larger than {MAX_FILE_SIZE // (1024 * 1024)}MiB; is it a config?"
        )
    try:
        return _read(text)
    except yaml.reader.ReaderError as exc:
        raise UnreadableDocument(_not_text(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UnreadableDocument(f"{where}{problem}") from None
    except RecursionError:  # the limits make this unreachable; never a traceback anyway
        raise UnreadableDocument("the file is nested too deeply to read") from None
    except MemoryError:
        raise UnreadableDocument("the file is too large to read") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and nesting deeper than MAX_DEPTH, and reports a
    value it cannot read (a 13th month, an integer of 5000 digits) at its line."""

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # The composer recurses once per level: stop long before Python's stack does.
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH or self._nodes > MAX_VALUES:
                # no-untyped-call: peek_event has no annotations in the stubs
                event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
                mark = event.start_mark if isinstance(event.start_mark, yaml.error.Mark) else None
                problem = (
                    f"nested deeper than {MAX_DEPTH} levels"
                    if self._depth > MAX_DEPTH
                    else f"holds more than {MAX_VALUES} values"
                )
                raise yaml.composer.ComposerError(None, None, problem, mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:  # the keys written here; merged ones (<<: *x) may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            repeated = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a key must be a plain value, not a list or mapping",
                key_node.start_mark,
            ) from None
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:  # merged first: a key written here wins
        key = loader.construct_object(key_node)
        try:
            mapping[key] = loader.construct_object(value_node)
        except TypeError:  # an unhashable key from a merged mapping
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a key must be a plain value, not a list or mapping",
                key_node.start_mark,
            ) from None
    return mapping


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    # Python refuses to read (or print) an int of more than 4300 digits; 0x forms have no limit.
    if len(node.value) > 1000:
        raise yaml.constructor.ConstructorError(
            None, None, "an integer this long is not a setting", node.start_mark
        )
    value: int = loader.construct_yaml_int(node)
    return value


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document that aliases make deeper than MAX_DEPTH, larger than MAX_VALUES, or
    cyclic, before anything walks it expanded."""
    heights: dict[int, tuple[int, int]] = {}  # id(node) -> (height, values)
    open_nodes: set[int] = set()

    def visit(node: yaml.Node, level: int) -> tuple[int, int]:
        known = heights.get(id(node))
        if known is None:
            if id(node) in open_nodes:
                raise yaml.composer.ComposerError(
                    None, None, "an alias refers to the value that holds it", node.start_mark
                )
            if level > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels (aliases included)",
                    node.start_mark,
                )
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            open_nodes.add(id(node))
            height, values = 0, 1
            for child in children:
                child_height, child_values = visit(child, level + 1)
                height = max(height, child_height + 1)
                values += child_values
                if values > MAX_VALUES:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"holds more than {MAX_VALUES} values (aliases expanded)",
                        node.start_mark,
                    )
            open_nodes.discard(id(node))
            known = heights[id(node)] = (height, values)
        if level + known[0] > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels (aliases included)",
                node.start_mark,
            )
        return known

    visit(root, 1)


def _read(text: bytes) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _not_text(exc: yaml.reader.ReaderError) -> str:
    character = exc.character[0] if isinstance(exc.character, bytes) else int(exc.character)
    if exc.encoding == "unicode":  # decoded, but a control character YAML does not allow
        return (
            f"the file holds character #x{character:04x} at offset {exc.position}, which YAML"
            " does not allow; is it a text file?"
        )
    return (
        f"the file is not {exc.encoding} text"
        f" (byte 0x{character:02x} at offset {exc.position}: {exc.reason})"
    )

"""The one way the project reads YAML: regular files only, UTF-8 only, size, depth and alias expansion bounded before any work.

Every YAML file the hub, the spawner and the CLI read (the flavor catalogue, the chart's hub
config) goes through `read_yaml_file` or `parse_yaml_bytes`. What a hostile or broken file
can do is bounded here, once:

- the file must be a regular file (a FIFO or a device would block or never end); it is opened
  non-blocking and checked with fstat before a byte is read, and at most `max_bytes` are read;
- the bytes must be UTF-8 (Helm and Kubernetes refuse anything else too);
- nesting deeper than `max_depth`, and more than `max_nodes` nodes once every alias is
  expanded (the "billion laughs"), stop the parser while it composes the document, long
  before anything walks, validates, logs or copies the data;
- NaN and infinity are refused (no quantity or count can be either), timestamps stay strings
  and scalar mapping keys become strings, as when Helm turns the same YAML into JSON;
- every error is one line naming the file and, where known, the line and column.
"""

from __future__ import annotations

import math
import os
import stat
from typing import Any

import yaml
import yaml.reader
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000


class SafeYAMLError(ValueError):
    """A YAML file that cannot be read or parsed within the bounds; the message is one line naming the file."""


class _Budget(yaml.YAMLError):
    """Raised inside the composer when a bound is crossed; turned into SafeYAMLError with the file name."""

    def __init__(self, message: str, mark: Any = None):
        super().__init__(message)
        self.message = message
        self.mark = mark


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts nodes (aliases expanded) and depth while it composes the document."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        # Expanded size of every anchored node, so an alias costs what it would cost expanded.
        self._sizes: dict[int, int] = {}

    # The scanner already tracks nesting; stopping it there keeps a file of a million '['
    # from costing quadratic time before the composer ever sees a node.
    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= self.max_depth:
            raise _Budget(f"nested deeper than {self.max_depth} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= self.max_depth:
            raise _Budget(f"nested deeper than {self.max_depth} levels", self.get_mark())
        return super().add_indent(column)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = Composer.compose_node(self, parent, index)
            self._spend(self._sizes.get(id(node), 1), event.start_mark)
            return node
        event = self.peek_event()
        self._depth += 1
        if self._depth > self.max_depth:
            raise _Budget(f"nested deeper than {self.max_depth} levels", event.start_mark)
        before = self._nodes
        self._spend(1, event.start_mark)
        try:
            node = Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def _spend(self, count: int, mark: Any) -> None:
        self._nodes += count
        if self._nodes > self.max_nodes:
            raise _Budget(
                f"more than {self.max_nodes} YAML nodes once aliases are expanded (nested aliases, the 'billion laughs'?)",
                mark,
            )

    # --- constructors: JSON-like data only -------------------------------------------------

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value = SafeConstructor.construct_yaml_float(self, node)
        if not math.isfinite(value):
            raise _Budget(f"{node.value!r}: NaN and infinity are not allowed", node.start_mark)
        return value

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                raise _Budget("a mapping key must be a plain value, not a list or mapping", key_node.start_mark)
        mapping = SafeConstructor.construct_mapping(self, node, deep=deep)
        # Helm turns YAML into JSON, where every key is a string; do the same so both agree.
        return {_key(k): v for k, v in mapping.items()}

    def construct_undefined_tag(self, node: Node) -> Any:
        raise _Budget(f"the tag {node.tag!r} is not allowed", node.start_mark)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


BoundedLoader.add_constructor("tag:yaml.org,2002:float", BoundedLoader.construct_yaml_float)
BoundedLoader.add_constructor("tag:yaml.org,2002:map", lambda loader, node: _map(loader, node))
# Timestamps stay text, as in JSON; binary data becomes the text it encodes, as Helm reads
# it; sets and ordered maps have no JSON form.
BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", SafeConstructor.construct_yaml_str)
BoundedLoader.add_constructor("tag:yaml.org,2002:binary", lambda loader, node: _binary(loader, node))
for _tag in ("set", "omap", "pairs"):
    BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", BoundedLoader.construct_undefined_tag)
BoundedLoader.add_constructor(None, BoundedLoader.construct_undefined_tag)


def _binary(loader: BoundedLoader, node: ScalarNode) -> str:
    try:
        return SafeConstructor.construct_yaml_binary(loader, node).decode("utf-8")
    except UnicodeDecodeError:
        raise _Budget("binary data that is not UTF-8 text is not allowed", node.start_mark) from None


def _map(loader: BoundedLoader, node: MappingNode) -> Any:
    data: dict[str, Any] = {}
    yield data
    data.update(loader.construct_mapping(node))


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_yaml_bytes(raw: bytes, source: str, *, max_bytes: int = MAX_BYTES) -> Any:
    """Parse one YAML document from bytes within the bounds; SafeYAMLError (one line) otherwise."""
    if len(raw) > max_bytes:
        raise SafeYAMLError(f"{source}: larger than {max_bytes // 1024} KiB; refusing to read it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SafeYAMLError(f"{source}: line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); save the file as UTF-8") from None
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text)
        return loader.get_single_data()
    except _Budget as e:
        raise SafeYAMLError(f"{source}: {_where(e.mark)}{e.message}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = _one_line(e.problem or e.context or "not valid YAML")
        raise SafeYAMLError(f"{source}: {_where(mark)}not valid YAML: {problem}") from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise SafeYAMLError(f"{source}: line {line}: the character U+{e.character:04X} is not allowed in YAML") from None
    except yaml.YAMLError as e:
        raise SafeYAMLError(f"{source}: not valid YAML: {_one_line(str(e))[:200]}") from None
    except (ValueError, TypeError, RecursionError) as e:
        # int() of a 5000-digit number, and friends: still the file's fault, still one line.
        raise SafeYAMLError(f"{source}: cannot read a value: {_one_line(str(e))[:200]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_bounded(path: str | os.PathLike[str], what: str, *, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file, at most `max_bytes`; never blocks on a FIFO or a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise SafeYAMLError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory" if stat.S_ISDIR(st.st_mode)
                else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket or another special file"
            )
            raise SafeYAMLError(f"{path}: the {what} must be a regular file, and this is {kind}")
        if st.st_size > max_bytes:
            raise SafeYAMLError(f"{path}: the {what} is larger than {max_bytes // 1024} KiB; refusing to read it")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    except BlockingIOError:
        raise SafeYAMLError(f"{path}: the {what} is not ready to be read (not a regular file?)") from None
    except OSError as e:
        raise SafeYAMLError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise SafeYAMLError(f"{path}: the {what} is larger than {max_bytes // 1024} KiB; refusing to read it")
    return raw


def read_yaml_file(path: str | os.PathLike[str], what: str, *, max_bytes: int = MAX_BYTES) -> Any:
    """read_bounded + parse_yaml_bytes: the parsed document of one YAML file."""
    return parse_yaml_bytes(read_bounded(path, what, max_bytes=max_bytes), str(path), max_bytes=max_bytes)

"""YAML a user gave, parsed in bounded time and memory.

PyYAML builds whatever a document says: an alias bomb (aliases of aliases,
``*a`` nine times nine levels deep) is a few hundred bytes that expand to
hundreds of millions of values once anything walks it, an alias to its own
parent is an endless structure, and ten thousand ``[`` overflow Python's
recursion.  Each file read here is checked first from its event stream
(depth and length: the stream is flat and keeps nothing), then its node
graph is sized with every alias counted expanded, before a single Python
object is constructed.  The limits are in :data:`LIMITS`.

Used by the inventory (harness.lab.inventory, with its own messages), the
split catalog and the known issues file.  The file itself is read with
harness.safeio first (FIFOs, devices, size).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from xenhil.harness.errors import ConfigError

#: The largest YAML document of any kind xenhil reads, with why: a 1000-host
#: inventory or a catalog of every split is a few thousand values and a few
#: levels deep.
LIMITS = {
    "events": 100_000,    # scalars, mappings, sequences, aliases
    "depth": 32,          # nested mappings/sequences
    "nodes": 200_000,     # nodes once aliases are expanded (alias bombs)
}


@dataclass(frozen=True)
class ShapeProblem:
    kind: str            # "depth", "events" or "aliases": the limit broken
    message: str
    line: int | None


def shape_problem(text: str, loader: type = yaml.SafeLoader) -> ShapeProblem | None:
    """What makes ``text`` deeper or longer than :data:`LIMITS` allows,
    found from its event stream before anything is built from it."""
    # libyaml's parser when present: the same events, many times faster.
    parser = getattr(yaml, "CSafeLoader", loader)(text)
    depth = events = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            events += 1
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > LIMITS["depth"]:
                    return ShapeProblem("depth", f"the YAML is nested more than {LIMITS['depth']} "
                                        "levels deep", event.start_mark.line + 1)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            if events > LIMITS["events"]:
                return ShapeProblem("events", f"the YAML has more than {LIMITS['events']} values",
                                    event.start_mark.line + 1)
    finally:
        parser.dispose()
    return None


def expanded_size(root: yaml.Node) -> int:
    """How many nodes the document has once every alias is expanded, without
    expanding them (each node's size is counted once); a node that contains
    itself counts as unbounded (more than LIMITS["nodes"])."""
    sizes: dict[int, int] = {}
    unbounded = LIMITS["nodes"] + 1
    # Iterative post-order: an alias bomb can be deep in aliases but not in nesting.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            children = _children(node)
            sizes[key] = min(unbounded, 1 + sum(sizes.get(id(c), unbounded) for c in children))
            continue
        if key in sizes:
            continue
        if key in active:
            return unbounded     # an alias to an enclosing node: a recursive structure
        active.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in active:
                return unbounded
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes.get(id(root), unbounded)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


ALIASES_MESSAGE = (f"the YAML expands to more than {LIMITS['nodes']} values through its "
                   "aliases (*name), or an alias refers to itself")


def load(text: str, what: str, fix: str) -> Any:
    """The one document of ``text`` (``what``: "split catalog FILE", ...)
    as Python objects; ConfigError naming the line and ``fix`` when it is
    not YAML or breaks a limit.  Only the parser's own words are shown: a
    line of the file could hold a secret."""
    loader = yaml.SafeLoader(text)
    try:
        shape = shape_problem(text)
        if shape is not None:
            raise ConfigError(f"{what}:{shape.line}: {shape.message}", help=fix)
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > LIMITS["nodes"]:
            raise ConfigError(f"{what}: {ALIASES_MESSAGE}",
                              help="write the values out instead of nesting aliases of aliases")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{what}{where}: not valid YAML ({exc.problem or exc.context})",
                          help=fix) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: not valid YAML ({type(exc).__name__})", help=fix) from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply", help=fix) from None
    finally:
        loader.dispose()


__all__ = ["LIMITS", "ShapeProblem", "shape_problem", "expanded_size", "load"]

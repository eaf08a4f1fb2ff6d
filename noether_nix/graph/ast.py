"""The Lagrange composition graph (spec §5.1–5.2) as msgspec Structs.

Nodes are internally tagged on ``"op"``. Unlike upstream, which ignores
them, an unknown field of a node or of the graph file is an error with the
closest known name (a misspelt ``"pining"`` must not silently mean the
default); keys starting with ``_`` (``"_comment"``) are comments, and the
graph file's ``ui`` (upstream's browser build) is allowed. Parsing reports
the first problem with the JSON path of the offending node
(``root.stages[2].branches.a: missing "op"``).
"""

from __future__ import annotations

import sys
from typing import Any, Literal, Union

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.model.jcs import encoded_size
from noether_nix.model.types import NType, parse_type, to_json
from noether_nix.suggest import unknown_keys


class _Node(msgspec.Struct, frozen=True, tag_field="op"):
    pass


class StageNode(_Node, frozen=True, tag="Stage"):
    id: str
    pinning: Literal["signature", "both"] = "signature"
    config: dict[str, Any] | None = None


class RemoteStageNode(_Node, frozen=True, tag="RemoteStage"):
    url: str
    input: NType
    output: NType


class ConstNode(_Node, frozen=True, tag="Const"):
    value: Any


class SequentialNode(_Node, frozen=True, tag="Sequential"):
    stages: list[Node]


class ParallelNode(_Node, frozen=True, tag="Parallel"):
    branches: dict[str, Node]


class BranchNode(_Node, frozen=True, tag="Branch"):
    predicate: Node
    if_true: Node
    if_false: Node


class FanoutNode(_Node, frozen=True, tag="Fanout"):
    source: Node
    targets: list[Node]


class MergeNode(_Node, frozen=True, tag="Merge"):
    sources: list[Node]
    target: Node


class RetryNode(_Node, frozen=True, tag="Retry"):
    stage: Node
    max_attempts: int
    delay_ms: int | None = None


class LetNode(_Node, frozen=True, tag="Let"):
    bindings: dict[str, Node]
    body: Node


Node = Union[
    StageNode, RemoteStageNode, ConstNode, SequentialNode, ParallelNode, BranchNode, FanoutNode,
    MergeNode, RetryNode, LetNode,
]
OPS = ("Stage", "RemoteStage", "Const", "Sequential", "Parallel", "Branch", "Fanout", "Merge", "Retry", "Let")


class Graph(msgspec.Struct, frozen=True):
    description: str
    version: str
    root: Node
    #: Our extension: spec files (relative to the graph file) the CLI adds
    #: before resolving. Not part of the composition ID.
    stages: list[str] = msgspec.field(default_factory=list)


# ------------------------------------------------------------------ parsing

_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    # op → (field, kind) where kind is node | nodes | nodemap | str | type | any | int
    "Stage": (("id", "str"),),
    "RemoteStage": (("url", "str"), ("input", "type"), ("output", "type")),
    "Const": (("value", "any"),),
    "Sequential": (("stages", "nodes"),),
    "Parallel": (("branches", "nodemap"),),
    "Branch": (("predicate", "node"), ("if_true", "node"), ("if_false", "node")),
    "Fanout": (("source", "node"), ("targets", "nodes")),
    "Merge": (("sources", "nodes"), ("target", "node")),
    "Retry": (("stage", "node"), ("max_attempts", "int")),
    "Let": (("bindings", "nodemap"), ("body", "node")),
}


#: Fields a node may have besides its required ones (and ``op``).
_OPTIONAL: dict[str, tuple[str, ...]] = {"Stage": ("pinning", "config"), "Retry": ("delay_ms",)}
#: The graph file's own fields: upstream's three, our ``stages``, and upstream's browser-build ``ui``.
GRAPH_FIELDS = ("description", "version", "root", "stages", "ui")


#: Deepest nesting of nodes, and of JSON inside a Const value or a config.
#: Upstream's serde_json refuses documents deeper than 128 levels, so no
#: graph upstream accepts is refused here; the bound keeps every recursive
#: pass (here, the checker, the engine) well inside Python's stack.
MAX_DEPTH = 128


def _bad(path: str, message: str) -> NoetherError:
    return NoetherError("invalid_graph", message, path=path)


def _too_deep(path: str, what: str) -> NoetherError:
    return NoetherError("graph_too_deep", f"{what} nested deeper than {MAX_DEPTH} levels", path=path,
                        hint="flatten nested Sequentials; upstream noether refuses such graphs too")


def _check_value_depth(value: Any, path: str) -> None:
    """Iteratively, so a hostile value cannot exhaust the stack before it is refused;
    then what JSON cannot carry (NaN, infinities, integers beyond a double, lone
    surrogates), which would make the graph's identity uncomputable."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise _too_deep(path, "JSON value")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    try:
        encoded_size(value, sys.maxsize, strict=True)
    except NoetherError as e:
        raise NoetherError(e.code, f"the value {e.message}", path=path) from None
    except TypeError as e:
        raise _bad(path, str(e)) from None


def _locate(raw: Any, path: str, depth: int = 1) -> Any:
    """Walk raw JSON, raise at the first structural problem naming its path,
    and return the node with RemoteStage type shorthand in wire form.

    msgspec decodes the result; this walk exists because msgspec's error
    paths lose map keys (``branches[...]``) and we promise exact paths.
    Const values and configs are returned untouched, never rewritten.
    """
    if depth > MAX_DEPTH:
        raise _too_deep(path, "nodes")
    if not isinstance(raw, dict):
        raise _bad(path, f"a node must be an object with \"op\", got {_json_kind(raw)}")
    if "op" not in raw:
        raise _bad(path, 'missing "op"')
    op = raw["op"]
    if not isinstance(op, str) or op not in _FIELDS:
        raise _bad(f"{path}.op", f"unknown op {op!r} (known: {', '.join(OPS)})")
    unknown_keys(raw, ("op", *(f for f, _ in _FIELDS[op]), *_OPTIONAL.get(op, ())), what=f"{op} node", path=path,
                 code="invalid_graph")
    out = dict(raw)
    for name, kind in _FIELDS[op]:
        if name not in raw:
            raise _bad(path, f'{op} node is missing "{name}"')
        v, where = raw[name], f"{path}.{name}"
        if kind == "node":
            out[name] = _locate(v, where, depth + 1)
        elif kind == "nodes":
            if not isinstance(v, list):
                raise _bad(where, "must be an array of nodes")
            out[name] = [_locate(child, f"{where}[{i}]", depth + 1) for i, child in enumerate(v)]
        elif kind == "nodemap":
            if not isinstance(v, dict):
                raise _bad(where, "must be an object of named nodes")
            out[name] = {k: _locate(child, f"{where}.{k}", depth + 1) for k, child in v.items()}
        elif kind == "str" and not isinstance(v, str):
            raise _bad(where, "must be a string")
        elif kind == "int" and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32):
            raise _bad(where, "must be a whole number from 0 to 4294967295")
        elif kind == "type":
            out[name] = to_json(parse_type(v, path=where))
        elif kind == "any":
            _check_value_depth(v, where)
    if op == "Stage":
        if raw.get("pinning", "signature") not in ("signature", "both"):
            raise _bad(f"{path}.pinning", 'must be "signature" or "both"')
        config = raw.get("config")
        if config is not None:
            if not isinstance(config, dict):
                raise _bad(f"{path}.config", "must be an object")
            _check_value_depth(config, f"{path}.config")
    if op == "Retry":
        d = raw.get("delay_ms")
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < 2**64):
            raise _bad(f"{path}.delay_ms", "must be a non-negative whole number or null")
    return out


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else type(v).__name__


def parse_node(raw: Any, *, path: str = "root") -> Node:
    checked = _locate(raw, path)
    try:
        node: Node = msgspec.convert(checked, Node)
    except msgspec.ValidationError as e:  # msgspec stays the schema; _locate only finds paths first
        msg = str(e)
        text, _, where = msg.partition(" - at `$")
        raise _bad(path + where.rstrip("`"), text) from None
    return node


def parse_graph(raw: Any, *, path: str = "graph") -> Graph:
    """Parse a graph file: ``description``, ``version``, ``root`` (and ``stages``, ``ui``, ``_…`` comments)."""
    if not isinstance(raw, dict):
        raise _bad(path, "a graph file must be a JSON object")
    unknown_keys(raw, GRAPH_FIELDS, what="graph file", path=path, code="invalid_graph")
    for key in ("description", "version", "root"):
        if key not in raw:
            raise _bad(path, f'missing "{key}"')
    for key in ("description", "version"):
        if not isinstance(raw[key], str):
            raise _bad(f"{path}.{key}" if path != "graph" else key, "must be a string")
    stages = raw.get("stages", [])
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise _bad("stages", "must be an array of spec file paths")
    return Graph(raw["description"], raw["version"], parse_node(raw["root"]), list(stages))


# ------------------------------------------------------------------ wire form


def node_to_json(node: Node) -> dict[str, Any]:
    """Upstream's serde form: Stage omits default pinning and absent config,
    Retry always writes ``delay_ms``."""
    match node:
        case StageNode(id=i, pinning=p, config=c):
            out: dict[str, Any] = {"op": "Stage", "id": i}
            if p == "both":
                out["pinning"] = "both"
            if c is not None:
                out["config"] = c
            return out
        case RemoteStageNode(url=u, input=i, output=o):
            return {"op": "RemoteStage", "url": u, "input": to_json(i), "output": to_json(o)}
        case ConstNode(value=v):
            return {"op": "Const", "value": v}
        case SequentialNode(stages=ss):
            return {"op": "Sequential", "stages": [node_to_json(s) for s in ss]}
        case ParallelNode(branches=bs):
            return {"op": "Parallel", "branches": {k: node_to_json(v) for k, v in bs.items()}}
        case BranchNode(predicate=p, if_true=t, if_false=f):
            return {"op": "Branch", "predicate": node_to_json(p), "if_true": node_to_json(t),
                    "if_false": node_to_json(f)}
        case FanoutNode(source=s, targets=ts):
            return {"op": "Fanout", "source": node_to_json(s), "targets": [node_to_json(t) for t in ts]}
        case MergeNode(sources=ss, target=t):
            return {"op": "Merge", "sources": [node_to_json(s) for s in ss], "target": node_to_json(t)}
        case RetryNode(stage=s, max_attempts=n, delay_ms=d):
            return {"op": "Retry", "stage": node_to_json(s), "max_attempts": n, "delay_ms": d}
        case LetNode(bindings=bs, body=b):
            return {"op": "Let", "bindings": {k: node_to_json(v) for k, v in bs.items()},
                    "body": node_to_json(b)}
    raise AssertionError(node)


def children(node: Node, path: str) -> list[tuple[str, Node]]:
    """Direct children with their node paths, in execution order."""
    match node:
        case SequentialNode(stages=ss):
            return [(f"{path}.stages[{i}]", s) for i, s in enumerate(ss)]
        case ParallelNode(branches=bs):
            return [(f"{path}.branches.{k}", bs[k]) for k in sorted(bs)]
        case BranchNode(predicate=p, if_true=t, if_false=f):
            return [(f"{path}.predicate", p), (f"{path}.if_true", t), (f"{path}.if_false", f)]
        case FanoutNode(source=s, targets=ts):
            return [(f"{path}.source", s)] + [(f"{path}.targets[{i}]", t) for i, t in enumerate(ts)]
        case MergeNode(sources=ss, target=t):
            return [(f"{path}.sources[{i}]", s) for i, s in enumerate(ss)] + [(f"{path}.target", t)]
        case RetryNode(stage=s):
            return [(f"{path}.stage", s)]
        case LetNode(bindings=bs, body=b):
            return [(f"{path}.bindings.{k}", bs[k]) for k in sorted(bs)] + [(f"{path}.body", b)]
    return []


def walk(node: Node, path: str = "root") -> list[tuple[str, Node]]:
    """Every node with its path, parents before children (iterative: deep graphs are fine)."""
    out: list[tuple[str, Node]] = []
    stack = [(path, node)]
    while stack:
        p, n = stack.pop()
        out.append((p, n))
        stack.extend(reversed(children(n, p)))
    return out

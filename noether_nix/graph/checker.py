"""The graph type checker (spec §6), with fresh type variables per stage
occurrence and messages that name the node path and both types.

Differences from upstream, each on purpose:
- every Stage occurrence gets its own type variables, so ``identity`` can be
  used at two types in one graph (upstream shares them, §13.17);
- an edge is unified only while a type variable or open record remains
  after applying what is already known; a bound variable then behaves like
  its type, with width subtyping (upstream unifies, where records must match
  exactly);
- a Branch's input is the most specific of its three parts' inputs, and
  both arms are checked against it (they run on the same value);
- a Let body that does not take a record is an error (it receives one);
- config values are checked against the input fields they supply.

Errors are collected, not just the first, so a user sees every problem in
one pass.
"""

from __future__ import annotations

import re

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.graph.ast import (
    BranchNode,
    ConstNode,
    FanoutNode,
    LetNode,
    MergeNode,
    Node,
    ParallelNode,
    RemoteStageNode,
    RetryNode,
    SequentialNode,
    StageNode,
)
from noether_nix.graph.resolve import Resolution, Warning_
from noether_nix.model.effects import EffectKind
from noether_nix.model.subtyping import Incompatible, is_subtype_of
from noether_nix.model.types import (
    ANY,
    BOOL,
    AnyType,
    ListType,
    MapKV,
    MapType,
    NType,
    RecordType,
    RecordWithBody,
    RecordWithType,
    RefinedBody,
    RefinedType,
    StreamType,
    UnionType,
    VarType,
    display,
    union,
)
from noether_nix.model.unification import (
    Substitution,
    UnificationError,
    contains_var_or_row,
    freshen,
    unify,
)
from noether_nix.model.values import conforms


class TypeErrorItem(msgspec.Struct, frozen=True):
    code: str
    message: str
    node_path: str


class CheckResult(msgspec.Struct):
    input: NType
    output: NType
    errors: list[TypeErrorItem]
    warnings: list[Warning_]


class _Checker:
    def __init__(self, resolution: Resolution) -> None:
        self.res = resolution
        self.subst = Substitution()
        self.errors: list[TypeErrorItem] = []
        self.warnings: list[Warning_] = []
        self.occurrence = 0
        self.retry_depth = 0  # how many retrying Retry nodes enclose the node being checked

    def error(self, code: str, message: str, path: str) -> None:
        self.errors.append(TypeErrorItem(code, message, path))

    def edge(self, out_t: NType, in_t: NType, path: str, edge_name: str, mismatch: str) -> None:
        """A value of type ``out_t`` flows into a place expecting ``in_t``.

        ``mismatch`` is the subtyping message with ``{out}``, ``{in}`` and
        ``{reason}`` placeholders; ``edge_name`` names the edge when
        unification fails.
        """
        out_t, in_t = self.subst.apply(out_t), self.subst.apply(in_t)
        if isinstance(out_t, AnyType) or isinstance(in_t, AnyType):
            return
        if contains_var_or_row(out_t) or contains_var_or_row(in_t):
            try:
                unify(out_t, in_t, self.subst)
            except UnificationError as e:
                self.error("unification_failed", f"type-variable unification failed at {edge_name}: {e.message}",
                           path)
            return
        res = is_subtype_of(out_t, in_t)
        if isinstance(res, Incompatible):
            self.error("type_mismatch", mismatch.format(out=display(out_t), inp=display(in_t), reason=res), path)

    def describe(self, node: Node, side: str) -> str:
        """Who produces (``side="out"``) or takes (``"in"``) a value at an edge: the stage, named."""
        while True:
            match node:
                case StageNode():
                    return f"stage {self.res.stage_for(node).label()}"
                case SequentialNode(stages=ss) if ss:
                    node = ss[-1] if side == "out" else ss[0]
                case RetryNode(stage=inner):
                    node = inner
                case RemoteStageNode(url=u):
                    return f"RemoteStage {u}"
                case _:
                    return f"the {type(node).__name__.removesuffix('Node')} node"

    def infer(self, node: Node, path: str) -> tuple[NType, NType]:
        match node:
            case StageNode():
                return self._stage(node, path)
            case RemoteStageNode(input=r_in, output=r_out):
                return r_in, r_out
            case ConstNode():
                return ANY, ANY
            case SequentialNode(stages=ss):
                if not ss:
                    self.error("empty_node", "empty Sequential node", path)
                    return ANY, ANY
                types = [self.infer(child, f"{path}.stages[{i}]") for i, child in enumerate(ss)]
                self._nondeterministic_feeding_pure(ss, path)
                for i in range(len(types) - 1):
                    who, whom = self.describe(ss[i], "out"), self.describe(ss[i + 1], "in")
                    self.edge(types[i][1], types[i + 1][0], f"{path}.stages[{i + 1}]",
                              f"sequential position {i} ({who} → {whom})",
                              f"type mismatch at position {i}: {_esc(who)} outputs {{out}}, but {_esc(whom)} takes "
                              "{inp}: {reason}")
                return types[0][0], types[-1][1]
            case ParallelNode(branches=bs):
                if not bs:
                    self.error("empty_node", "empty Parallel node", path)
                    return ANY, ANY
                par_in: dict[str, NType] = {}
                par_out: dict[str, NType] = {}
                for k in sorted(bs):
                    par_in[k], par_out[k] = self.infer(bs[k], f"{path}.branches.{k}")
                return RecordType(par_in), RecordType(par_out)
            case BranchNode(predicate=p, if_true=t, if_false=f):
                return self._branch(p, t, f, path)
            case FanoutNode(source=s, targets=ts):
                s_in, s_out = self.infer(s, f"{path}.source")
                if not ts:
                    self.error("empty_node", "empty Fanout node", path)
                    return s_in, ListType(ANY)
                fan_outs: list[NType] = []
                for i, t in enumerate(ts):
                    ft_in, ft_out = self.infer(t, f"{path}.targets[{i}]")
                    who, whom = self.describe(s, "out"), self.describe(t, "in")
                    self.edge(s_out, ft_in, f"{path}.targets[{i}]", f"fanout target {i} ({who} → {whom})",
                              f"fanout target {i}: the source, {_esc(who)}, outputs {{out}}, but the target, "
                              f"{_esc(whom)}, takes {{inp}}: {{reason}}")
                    fan_outs.append(self.subst.apply(ft_out))
                return s_in, ListType(fan_outs[0] if len(fan_outs) == 1 else union(fan_outs))
            case MergeNode(sources=ss, target=t):
                if not ss:
                    self.error("empty_node", "empty Merge node", path)
                    return ANY, self.infer(t, f"{path}.target")[1]
                m_in: dict[str, NType] = {}
                m_out: dict[str, NType] = {}
                for i, source in enumerate(ss):
                    m_in[f"source_{i}"], m_out[f"source_{i}"] = self.infer(source, f"{path}.sources[{i}]")
                mt_in, mt_out = self.infer(t, f"{path}.target")
                whom = self.describe(t, "in")
                self.edge(RecordType(m_out), mt_in, f"{path}.target", f"merge (→ {whom})",
                          f"merge: the sources give {{out}}, but the target, {_esc(whom)}, takes {{inp}}: {{reason}}")
                return RecordType(m_in), mt_out
            case RetryNode(stage=s, max_attempts=n):
                retries = n > 1
                self.retry_depth += retries
                try:
                    return self.infer(s, f"{path}.stage")
                finally:
                    self.retry_depth -= retries
            case LetNode(bindings=bs, body=b):
                return self._let(bs, b, path)
        raise AssertionError(node)

    def _stage(self, node: StageNode, path: str) -> tuple[NType, NType]:
        stage = self.res.stage_for(node)
        self.occurrence += 1
        tag = str(self.occurrence)
        in_t, out_t = freshen(stage.input, tag), freshen(stage.output, tag)
        if not self.retry_depth and stage.effects.has(EffectKind.FALLIBLE):
            self.warnings.append(Warning_("fallible_without_retry", f"stage {stage.label()} is Fallible but has "
                                          "no Retry wrapper; failures will propagate", path))
        if node.config and isinstance(in_t, RecordType):
            for key in sorted(node.config):
                field = in_t.value.get(key)
                problem = conforms(node.config[key], field, f"config.{key}") if field is not None else None
                if problem:
                    self.error("config_type_mismatch",
                               f"config of stage {stage.label()} does not fit its input: {problem}",
                               f"{path}.config.{key}")
            remaining = {k: v for k, v in in_t.value.items() if k not in node.config}
            # Upstream's rule: with at most one field left, the runtime wraps a
            # non-object input under a conventional key, so any input goes.
            in_t = ANY if len(remaining) <= 1 else RecordType(remaining)
        return in_t, out_t

    def _nondeterministic_feeding_pure(self, ss: list[Node], path: str) -> None:
        for i in range(len(ss) - 1):
            a, b = ss[i], ss[i + 1]
            if isinstance(a, StageNode) and isinstance(b, StageNode):
                sa, sb = self.res.stage_for(a), self.res.stage_for(b)
                if sa.effects.has(EffectKind.NON_DETERMINISTIC) and sb.effects.has(EffectKind.PURE):
                    self.warnings.append(Warning_(
                        "nondeterministic_feeding_pure",
                        f"non-deterministic stage {sa.label()} feeds pure stage {sb.label()}; its cached "
                        "results depend on a value that changes between runs",
                        f"{path}.stages[{i}]",
                    ))

    def _branch(self, p: Node, t: Node, f: Node, path: str) -> tuple[NType, NType]:
        p_in, p_out = self.infer(p, f"{path}.predicate")
        t_in, t_out = self.infer(t, f"{path}.if_true")
        f_in, f_out = self.infer(f, f"{path}.if_false")
        p_out = self.subst.apply(p_out)
        if contains_var_or_row(p_out):
            try:
                unify(p_out, BOOL, self.subst)
                ok = True
            except UnificationError:
                ok = False
        else:
            ok = not isinstance(is_subtype_of(p_out, BOOL), Incompatible)
        if not ok:
            self.error("branch_predicate_not_bool", f"branch predicate must produce Bool, got {display(p_out)}",
                       f"{path}.predicate")
        # All three parts run on the branch's own input: it must satisfy each.
        parts = [("predicate", p_in), ("if_true", t_in), ("if_false", f_in)]
        specific = [(name, ty) for name, ty in parts if not isinstance(self.subst.apply(ty), AnyType)]
        if not specific:
            branch_in: NType = ANY
        else:
            first_name, branch_in = specific[0]
            for name, ty in specific[1:]:
                self.edge(branch_in, ty, f"{path}.{name}", f"branch {name}",
                          f"branch {name}: branch input {{out}} (what {first_name} takes) is not subtype of "
                          f"{name} input {{inp}}: {{reason}}")
        return branch_in, union([self.subst.apply(t_out), self.subst.apply(f_out)])

    def _let(self, bs: dict[str, Node], body: Node, path: str) -> tuple[NType, NType]:
        if not bs:
            self.error("empty_node", "empty Let node", path)
            return self.infer(body, f"{path}.body")
        required: dict[str, NType] = {}
        forced_any = False
        let_outs: dict[str, NType] = {}
        for k in sorted(bs):
            b_in, let_outs[k] = self.infer(bs[k], f"{path}.bindings.{k}")
            b_in = self.subst.apply(b_in)
            if isinstance(b_in, RecordType):
                required.update(b_in.value)
            else:
                forced_any = True
        body_in, body_out = self.infer(body, f"{path}.body")
        body_in = self.subst.apply(body_in)
        fields = (body_in.value if isinstance(body_in, RecordType)
                  else body_in.value.fields if isinstance(body_in, RecordWithType) else None)
        if fields is not None:
            for field, ft in fields.items():
                if field in let_outs:
                    self.edge(let_outs[field], ft, f"{path}.bindings.{field}", f'let binding "{field}"',
                              f'let binding "{field}": output {{out}} is not subtype of input {{inp}}: {{reason}}')
                else:
                    required.setdefault(field, ft)
        else:
            # The body always receives a record: the outer input's fields plus the bindings.
            self.edge(RecordType(let_outs), body_in, f"{path}.body", "let body",
                      "let body: it receives the record {out} but its input is {inp}: {reason}")
        let_in: NType = ANY if forced_any or not required else RecordType(required)
        return let_in, body_out


def _esc(text: str) -> str:
    """User text (a stage's name) inside a message template that is ``str.format``-ed."""
    return text.replace("{", "{{").replace("}", "}}")


_FRESH = re.compile(r"^(.*)#\d+$")


def _var_names(t: NType, into: set[str]) -> None:
    match t:
        case VarType(value=v):
            into.add(v)
        case ListType(value=v) | StreamType(value=v):
            _var_names(v, into)
        case MapType(value=MapKV(key=k, value=v)):
            _var_names(k, into)
            _var_names(v, into)
        case UnionType(value=vs):
            for v in vs:
                _var_names(v, into)
        case RecordType(value=fields):
            for v in fields.values():
                _var_names(v, into)
        case RecordWithType(value=RecordWithBody(fields=fields, rest=rest)):
            into.add(rest)
            for v in fields.values():
                _var_names(v, into)
        case RefinedType(value=RefinedBody(base=b)):
            _var_names(b, into)


def presentable(types: list[NType]) -> list[NType]:
    """Resolved graph types as users should read them: a variable left
    unbound gets its stage's own name back (``T``, not ``T#3``) unless two
    distinct variables would then look alike, and unification's placeholders
    for ``Any`` become ``Any`` again."""
    names: set[str] = set()
    for t in types:
        _var_names(t, names)
    by_base: dict[str, set[str]] = {}
    for n in names:
        m = _FRESH.match(n)
        by_base.setdefault(m.group(1) if m else n, set()).add(n)
    rename = {n: base for base, ns in by_base.items() if len(ns) == 1 for n in ns}

    def go(t: NType) -> NType:
        match t:
            case VarType(value=v):
                return ANY if v.startswith("_any_") else VarType(rename.get(v, v))
            case ListType(value=v):
                return ListType(go(v))
            case StreamType(value=v):
                return StreamType(go(v))
            case MapType(value=MapKV(key=k, value=v)):
                return MapType(MapKV(go(k), go(v)))
            case UnionType(value=vs):
                return UnionType([go(v) for v in vs])
            case RecordType(value=fields):
                return RecordType({k: go(v) for k, v in fields.items()})
            case RecordWithType(value=RecordWithBody(fields=fields, rest=rest)):
                return RecordWithType(RecordWithBody({k: go(v) for k, v in fields.items()}, rename.get(rest, rest)))
            case RefinedType(value=RefinedBody(base=b, refinement=r)):
                return RefinedType(RefinedBody(go(b), r))
        return t

    return [go(t) for t in types]


def check_types(root: Node, resolution: Resolution) -> CheckResult:
    c = _Checker(resolution)
    in_t, out_t = c.infer(root, "root")
    shown_in, shown_out = presentable([c.subst.apply(in_t), c.subst.apply(out_t)])
    return CheckResult(shown_in, shown_out, c.errors, c.warnings)


def raise_type_errors(result: CheckResult) -> None:
    if result.errors:
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise NoetherError(
            first.code,
            first.message + more,
            path=first.node_path,
            exit_code=2,
            details={"errors": [msgspec.to_builtins(e) for e in result.errors]},
        )

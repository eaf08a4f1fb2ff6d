"""The graph type checker (spec §6), with fresh type variables per stage
occurrence and messages that name the node path and both types.

Edges whose types contain a type variable or an open record are unified;
all others use structural subtyping. Errors are collected, not just the
first, so a user sees every problem in one pass.
"""

from __future__ import annotations

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
from noether_nix.model.types import ANY, BOOL, ListType, NType, RecordType, display, union
from noether_nix.model.unification import (
    Substitution,
    UnificationError,
    contains_var_or_row,
    freshen,
    unify,
)


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

    def error(self, code: str, message: str, path: str) -> None:
        self.errors.append(TypeErrorItem(code, message, path))

    def edge(self, out_t: NType, in_t: NType, path: str, what: str) -> None:
        """A value of type ``out_t`` flows into a place expecting ``in_t``."""
        if contains_var_or_row(out_t) or contains_var_or_row(in_t):
            try:
                unify(out_t, in_t, self.subst)
            except UnificationError as e:
                self.error("unification_failed", f"type-variable unification failed at {what}: {e.message}", path)
            return
        res = is_subtype_of(out_t, in_t)
        if isinstance(res, Incompatible):
            self.error(
                "type_mismatch",
                f"{what}: output {display(out_t)} is not subtype of input {display(in_t)}: {res}",
                path,
            )

    def infer(self, node: Node, path: str) -> tuple[NType, NType]:
        match node:
            case StageNode():
                stage = self.res.stage_for(node)
                self.occurrence += 1
                tag = str(self.occurrence)
                in_t, out_t = freshen(stage.input, tag), freshen(stage.output, tag)
                if node.config and isinstance(in_t, RecordType):
                    remaining = {k: v for k, v in in_t.value.items() if k not in node.config}
                    in_t = ANY if len(remaining) <= 1 else RecordType(remaining)
                return in_t, out_t
            case RemoteStageNode(input=r_in, output=r_out):
                return r_in, r_out
            case ConstNode():
                return ANY, ANY
            case SequentialNode(stages=ss):
                if not ss:
                    self.error("empty_node", "empty Sequential node", path)
                    return ANY, ANY
                types = [self.infer(child, f"{path}.stages[{i}]") for i, child in enumerate(ss)]
                for i in range(len(types) - 1):
                    self.edge(types[i][1], types[i + 1][0], f"{path}.stages[{i + 1}]",
                              f"type mismatch at position {i}")
                    self._sequence_warnings(ss[i], ss[i + 1], f"{path}.stages[{i}]")
                for i, child in enumerate(ss):
                    self._fallible_warning(child, f"{path}.stages[{i}]")
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
                p_in, p_out = self.infer(p, f"{path}.predicate")
                t_in, t_out = self.infer(t, f"{path}.if_true")
                f_in, f_out = self.infer(f, f"{path}.if_false")
                if contains_var_or_row(p_out):
                    try:
                        unify(p_out, BOOL, self.subst)
                    except UnificationError:
                        self.error("branch_predicate_not_bool",
                                   f"branch predicate must produce Bool, got {display(p_out)}", path)
                elif not is_subtype_of(p_out, BOOL):
                    self.error("branch_predicate_not_bool",
                               f"branch predicate must produce Bool, got {display(p_out)}", path)
                # Both arms receive the branch's original input.
                self.edge(p_in, t_in, f"{path}.if_true", "branch input")
                self.edge(p_in, f_in, f"{path}.if_false", "branch input")
                return p_in, union([self.subst.apply(t_out), self.subst.apply(f_out)])
            case FanoutNode(source=s, targets=ts):
                s_in, s_out = self.infer(s, f"{path}.source")
                if not ts:
                    self.error("empty_node", "empty Fanout node", path)
                    return s_in, ListType(ANY)
                fan_outs: list[NType] = []
                for i, t in enumerate(ts):
                    ft_in, ft_out = self.infer(t, f"{path}.targets[{i}]")
                    self.edge(s_out, ft_in, f"{path}.targets[{i}]", f"fanout target {i}")
                    fan_outs.append(self.subst.apply(ft_out))
                return s_in, ListType(fan_outs[0] if len(fan_outs) == 1 else union(fan_outs))
            case MergeNode(sources=ss, target=t):
                if not ss:
                    self.error("empty_node", "empty Merge node", path)
                    return ANY, self.infer(t, f"{path}.target")[1]
                m_in: dict[str, NType] = {}
                m_out: dict[str, NType] = {}
                for i, src in enumerate(ss):
                    m_in[f"source_{i}"], m_out[f"source_{i}"] = self.infer(src, f"{path}.sources[{i}]")
                mt_in, mt_out = self.infer(t, f"{path}.target")
                self.edge(RecordType(m_out), mt_in, f"{path}.target", "merge")
                return RecordType(m_in), mt_out
            case RetryNode(stage=s):
                return self.infer(s, f"{path}.stage")
            case LetNode(bindings=bs, body=b):
                if not bs:
                    self.error("empty_node", "empty Let node", path)
                    return self.infer(b, f"{path}.body")
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
                body_in, body_out = self.infer(b, f"{path}.body")
                body_in = self.subst.apply(body_in)
                if isinstance(body_in, RecordType):
                    for field, ft in body_in.value.items():
                        if field in let_outs:
                            self.edge(let_outs[field], ft, f"{path}.bindings.{field}", f"let binding \"{field}\"")
                        else:
                            required.setdefault(field, ft)
                let_in: NType = ANY if forced_any or not required else RecordType(required)
                return let_in, body_out
        raise AssertionError(node)

    def _stage_of(self, node: Node) -> object | None:
        return self.res.stage_for(node) if isinstance(node, StageNode) else None

    def _fallible_warning(self, node: Node, path: str) -> None:
        if isinstance(node, StageNode):
            stage = self.res.stage_for(node)
            if stage.effects.has(EffectKind.FALLIBLE):
                self.warnings.append(Warning_(
                    "fallible_without_retry",
                    f"stage {stage.label()} is Fallible but has no Retry wrapper; failures will propagate",
                    path,
                ))

    def _sequence_warnings(self, first: Node, second: Node, path: str) -> None:
        if isinstance(first, StageNode) and isinstance(second, StageNode):
            a, b = self.res.stage_for(first), self.res.stage_for(second)
            if a.effects.has(EffectKind.NON_DETERMINISTIC) and b.effects.has(EffectKind.PURE):
                self.warnings.append(Warning_(
                    "nondeterministic_feeding_pure",
                    f"non-deterministic stage {a.label()} feeds pure stage {b.label()}; its cached "
                    "results depend on a value that changes between runs",
                    path,
                ))


def check_types(root: Node, resolution: Resolution) -> CheckResult:
    c = _Checker(resolution)
    in_t, out_t = c.infer(root, "root")
    return CheckResult(c.subst.apply(in_t), c.subst.apply(out_t), c.errors, c.warnings)


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

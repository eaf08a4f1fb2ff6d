"""Type-variable unification (spec §1.5), used by the graph checker.

Robinson unification with an occurs check over NTypes directly: ``Any``
is a fresh variable per occurrence, refinements are stripped, unions unify
argument-wise in stored order, closed records need identical key sets, and
an open record (``RecordWith``) binds its row variable to the leftover
fields of a closed one.

The substitution is a union-find-like map with path compression in
``resolve`` so that long chains of variables stay cheap on large graphs.
"""

from __future__ import annotations

import itertools

from noether_nix.errors import NoetherError
from noether_nix.model.types import (
    AnyType,
    ListType,
    MapKV,
    MapType,
    NType,
    RecordType,
    RecordWithBody,
    RecordWithType,
    RefinedType,
    StreamType,
    UnionType,
    VarType,
    display,
)

_fresh = itertools.count()


class UnificationError(NoetherError):
    def __init__(self, a: NType, b: NType, why: str) -> None:
        super().__init__(
            "unification_failed", f"cannot unify {display(a)} with {display(b)}: {why}", exit_code=2
        )
        self.left = a
        self.right = b
        self.why = why


class Substitution:
    """Bindings of type variables (and row variables) to types."""

    def __init__(self) -> None:
        self.types: dict[str, NType] = {}

    def resolve(self, t: NType) -> NType:
        """Follow variable bindings at the top of ``t`` (with path compression)."""
        seen: list[str] = []
        while isinstance(t, VarType) and t.value in self.types:
            seen.append(t.value)
            t = self.types[t.value]
        for name in seen[:-1]:
            self.types[name] = t
        return t

    def apply(self, t: NType) -> NType:
        t = self.resolve(t)
        match t:
            case ListType(value=v):
                return ListType(self.apply(v))
            case StreamType(value=v):
                return StreamType(self.apply(v))
            case MapType(value=MapKV(key=k, value=v)):
                return MapType(MapKV(self.apply(k), self.apply(v)))
            case UnionType(value=vs):
                return UnionType([self.apply(v) for v in vs])
            case RecordType(value=fields):
                return RecordType({k: self.apply(v) for k, v in fields.items()})
            case RecordWithType(value=RecordWithBody(fields=fields, rest=rest)):
                known = {k: self.apply(v) for k, v in fields.items()}
                row = self.resolve(VarType(rest))
                if isinstance(row, RecordType):
                    merged = {k: self.apply(v) for k, v in row.value.items()}
                    merged.update(known)  # known fields win
                    return RecordType(merged)
                if isinstance(row, RecordWithType):
                    merged = {k: self.apply(v) for k, v in row.value.fields.items()}
                    merged.update(known)
                    return self.apply(RecordWithType(RecordWithBody(merged, row.value.rest)))
                new_rest = row.value if isinstance(row, VarType) else rest
                return RecordWithType(RecordWithBody(known, new_rest))
            case RefinedType(value=body):
                return RefinedType(type(body)(self.apply(body.base), body.refinement))
        return t

    def bind(self, name: str, t: NType, a: NType, b: NType) -> None:
        if isinstance(t, VarType) and t.value == name:
            return
        if _occurs(name, t, self):
            raise UnificationError(a, b, f"type variable <{name}> occurs in {display(self.apply(t))}")
        self.types[name] = t


def _occurs(name: str, t: NType, s: Substitution) -> bool:
    t = s.resolve(t)
    match t:
        case VarType(value=v):
            return v == name
        case ListType(value=v) | StreamType(value=v):
            return _occurs(name, v, s)
        case MapType(value=MapKV(key=k, value=v)):
            return _occurs(name, k, s) or _occurs(name, v, s)
        case UnionType(value=vs):
            return any(_occurs(name, v, s) for v in vs)
        case RecordType(value=fields):
            return any(_occurs(name, v, s) for v in fields.values())
        case RecordWithType(value=RecordWithBody(fields=fields, rest=rest)):
            return rest == name or any(_occurs(name, v, s) for v in fields.values())
    return False


def _strip(t: NType) -> NType:
    while isinstance(t, RefinedType):
        t = t.value.base
    if isinstance(t, AnyType):
        return VarType(f"_any_{next(_fresh)}")
    return t


def unify(a: NType, b: NType, subst: Substitution | None = None) -> Substitution:
    """Extend ``subst`` so that ``a`` and ``b`` become equal, or raise UnificationError."""
    s = subst if subst is not None else Substitution()
    _unify(a, b, s, a, b)
    return s


def _unify(x: NType, y: NType, s: Substitution, top_a: NType, top_b: NType) -> None:
    x, y = s.resolve(_strip(x)), s.resolve(_strip(y))
    x, y = _strip(x), _strip(y)
    if isinstance(x, VarType) and isinstance(y, VarType) and x.value == y.value:
        return
    if isinstance(x, VarType):
        s.bind(x.value, y, top_a, top_b)
        return
    if isinstance(y, VarType):
        s.bind(y.value, x, top_a, top_b)
        return
    tx, ty = type(x), type(y)
    if isinstance(x, (RecordType, RecordWithType)) and isinstance(y, (RecordType, RecordWithType)):
        _unify_records(x, y, s, top_a, top_b)
        return
    if tx is not ty:
        raise UnificationError(top_a, top_b, f"{display(x)} vs {display(y)}")
    match x, y:
        case (ListType(value=a), ListType(value=b)) | (StreamType(value=a), StreamType(value=b)):
            _unify(a, b, s, top_a, top_b)
        case MapType(value=MapKV(key=k1, value=v1)), MapType(value=MapKV(key=k2, value=v2)):
            _unify(k1, k2, s, top_a, top_b)
            _unify(v1, v2, s, top_a, top_b)
        case UnionType(value=vs1), UnionType(value=vs2):
            if len(vs1) != len(vs2):
                raise UnificationError(top_a, top_b, "unions of different arity")
            for a, b in zip(vs1, vs2, strict=True):
                _unify(a, b, s, top_a, top_b)
        case _:
            # Primitive constructors: equal tags unify.
            return


def _unify_records(x: NType, y: NType, s: Substitution, top_a: NType, top_b: NType) -> None:
    if isinstance(x, RecordType) and isinstance(y, RecordType):
        if set(x.value) != set(y.value):
            diff = sorted(set(x.value) ^ set(y.value))
            raise UnificationError(top_a, top_b, f"record fields differ: {', '.join(diff)}")
        for k in sorted(x.value):
            _unify(x.value[k], y.value[k], s, top_a, top_b)
        return
    if isinstance(x, RecordWithType) and isinstance(y, RecordWithType):
        raise UnificationError(top_a, top_b, "unifying two open records is not supported")
    open_r, closed = (x, y) if isinstance(x, RecordWithType) else (y, x)
    assert isinstance(open_r, RecordWithType) and isinstance(closed, RecordType)
    fields, rest = open_r.value.fields, open_r.value.rest
    for k in sorted(fields):
        if k not in closed.value:
            raise UnificationError(top_a, top_b, f"missing field `{k}`")
        _unify(fields[k], closed.value[k], s, top_a, top_b)
    leftover = {k: v for k, v in closed.value.items() if k not in fields}
    _unify(VarType(rest), RecordType(leftover), s, top_a, top_b)


def freshen(t: NType, suffix: str) -> NType:
    """Rename every type and row variable of ``t`` (per stage occurrence)."""
    match t:
        case VarType(value=v):
            return VarType(f"{v}#{suffix}")
        case ListType(value=v):
            return ListType(freshen(v, suffix))
        case StreamType(value=v):
            return StreamType(freshen(v, suffix))
        case MapType(value=MapKV(key=k, value=v)):
            return MapType(MapKV(freshen(k, suffix), freshen(v, suffix)))
        case UnionType(value=vs):
            return UnionType([freshen(v, suffix) for v in vs])
        case RecordType(value=fields):
            return RecordType({k: freshen(v, suffix) for k, v in fields.items()})
        case RecordWithType(value=RecordWithBody(fields=fields, rest=rest)):
            return RecordWithType(RecordWithBody({k: freshen(v, suffix) for k, v in fields.items()}, f"{rest}#{suffix}"))
        case RefinedType(value=body):
            return RefinedType(type(body)(freshen(body.base, suffix), body.refinement))
    return t


def contains_var_or_row(t: NType) -> bool:
    """Whether an edge with this type must be unified rather than subtype-checked."""
    match t:
        case VarType() | RecordWithType():
            return True
        case ListType(value=v) | StreamType(value=v):
            return contains_var_or_row(v)
        case MapType(value=MapKV(key=k, value=v)):
            return contains_var_or_row(k) or contains_var_or_row(v)
        case UnionType(value=vs):
            return any(contains_var_or_row(v) for v in vs)
        case RecordType(value=fields):
            return any(contains_var_or_row(v) for v in fields.values())
        case RefinedType(value=body):
            return contains_var_or_row(body.base)
    return False

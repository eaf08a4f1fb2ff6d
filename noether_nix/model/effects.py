"""Effects and EffectSet (spec §2).

An effect is internally tagged on ``"effect"``; an EffectSet serialises as
``{"effects": [...]}`` sorted by variant index, then payload.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Iterable
from typing import Any, Union

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.suggest import did_you_mean


class _E(msgspec.Struct, frozen=True, tag_field="effect"):
    pass


class Cost(_E, frozen=True, tag="Cost"):
    cents: int


class Fallible(_E, frozen=True, tag="Fallible"):
    pass


class FsRead(_E, frozen=True, tag="FsRead"):
    path: str


class FsWrite(_E, frozen=True, tag="FsWrite"):
    path: str


class Llm(_E, frozen=True, tag="Llm"):
    model: str


class Network(_E, frozen=True, tag="Network"):
    pass


class NonDeterministic(_E, frozen=True, tag="NonDeterministic"):
    pass


class Process(_E, frozen=True, tag="Process"):
    pass


class Pure(_E, frozen=True, tag="Pure"):
    pass


class Unknown(_E, frozen=True, tag="Unknown"):
    pass


Effect = Union[
    Cost, Fallible, FsRead, FsWrite, Llm, Network, NonDeterministic, Process, Pure, Unknown
]
_VARIANTS: tuple[type, ...] = Effect.__args__  # type: ignore[attr-defined]
_INDEX: dict[type, int] = {t: i for i, t in enumerate(_VARIANTS)}


class EffectKind(enum.Enum):
    """The variant without payload; ``str()`` is upstream's Display form."""

    COST = "cost"
    FALLIBLE = "fallible"
    FS_READ = "fs-read"
    FS_WRITE = "fs-write"
    LLM = "llm"
    NETWORK = "network"
    NON_DETERMINISTIC = "non-deterministic"
    PROCESS = "process"
    PURE = "pure"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, token: str) -> EffectKind:
        """Parse an ``--allow-effects`` token (upstream's accepted spellings)."""
        t = token.strip().lower()
        aliases = {"fsread": "fs-read", "fswrite": "fs-write", "nondeterministic": "non-deterministic"}
        t = aliases.get(t, t)
        for k in cls:
            if k.value == t:
                return k
        known = ", ".join(k.value for k in cls)
        raise NoetherError(
            "unknown_effect", f"unknown effect kind {token.strip()!r} (known: {known})"
        )


_KIND_OF: dict[type, EffectKind] = dict(zip(_VARIANTS, EffectKind, strict=True))


def kind(e: Effect) -> EffectKind:
    return _KIND_OF[type(e)]


def _path_components(p: str) -> tuple[str, ...]:
    # Rust's Path ordering and equality are component-wise: "/a/" == "/a",
    # and "/a/b" < "/a.b".
    comps = [c for c in p.split("/") if c not in ("", ".")]
    return (("/",) if p.startswith("/") else ()) + tuple(comps)


def sort_key(e: Effect) -> tuple[Any, ...]:
    idx = _INDEX[type(e)]
    match e:
        case Cost(cents=c):
            return (idx, c)
        case FsRead(path=p) | FsWrite(path=p):
            return (idx, tuple(c.encode() for c in _path_components(p)))
        case Llm(model=m):
            return (idx, m.encode())
    return (idx,)


class EffectSet(msgspec.Struct, frozen=True):
    """A sorted, de-duplicated set of effects; wire form ``{"effects": [...]}``."""

    effects: tuple[Effect, ...] = ()

    @classmethod
    def of(cls, effects: Iterable[Effect]) -> EffectSet:
        uniq: dict[tuple[Any, ...], Effect] = {}
        for e in effects:
            uniq.setdefault(sort_key(e), e)
        return cls(tuple(uniq[k] for k in sorted(uniq)))

    @classmethod
    def pure(cls) -> EffectSet:
        return cls((Pure(),))

    @classmethod
    def unknown(cls) -> EffectSet:
        return cls((Unknown(),))

    def kinds(self) -> list[EffectKind]:
        return [kind(e) for e in self.effects]

    def has(self, k: EffectKind) -> bool:
        return any(kind(e) is k for e in self.effects)

    def cost_cents(self) -> int:
        return sum(e.cents for e in self.effects if isinstance(e, Cost))

    def union(self, other: EffectSet) -> EffectSet:
        return EffectSet.of((*self.effects, *other.effects))

    def to_json(self) -> dict[str, Any]:
        return {"effects": [msgspec.to_builtins(e) for e in self.effects]}

    def display(self) -> list[str]:
        return [str(kind(e)) for e in self.effects]


_BARE_NAMES: dict[str, Effect] = {
    "pure": Pure(),
    "network": Network(),
    "fallible": Fallible(),
    "nondeterministic": NonDeterministic(),
    "non-deterministic": NonDeterministic(),
    "non_deterministic": NonDeterministic(),
    "process": Process(),
    "llm": Llm(model="unknown"),
    "cost": Cost(cents=0),
    "unknown": Unknown(),
}


def _check_fs_path(p: str, where: str) -> str:
    if not p.startswith("/"):
        raise NoetherError("invalid_effect", f"filesystem effect path must be absolute, got {p!r}", path=where)
    if ".." in p.split("/"):
        raise NoetherError("invalid_effect", f"filesystem effect path must not contain '..', got {p!r}", path=where)
    norm = posixpath.normpath(p)
    return "/" if norm in ("/", "//") else norm


def parse_effect(value: Any, *, path: str = "effect") -> Effect:
    """Parse one effect as written in a spec file.

    Accepts a bare name (``"Network"``, ``"network"``, ``"non-deterministic"``)
    or the canonical object (``{"effect":"FsRead","path":"/data"}``). Unknown
    effects are errors naming them (upstream silently drops them).
    """
    if isinstance(value, str):
        e = _BARE_NAMES.get(value.strip().lower())
        if e is None:
            if value.strip().lower() in ("fsread", "fs-read", "fs_read", "fswrite", "fs-write", "fs_write"):
                raise NoetherError(
                    "invalid_effect",
                    f"effect {value!r} needs a path: write {{\"effect\": \"FsRead\", \"path\": \"/abs/path\"}}",
                    path=path,
                )
            names = [t.__struct_config__.tag for t in _VARIANTS]  # type: ignore[attr-defined]
            raise NoetherError("unknown_effect", f"unknown effect {value!r}{did_you_mean(value.strip(), names)} "
                               f"(known: {', '.join(names)})", path=path)
        return e
    if isinstance(value, dict):
        try:
            e2: Effect = msgspec.convert(value, Effect)
        except msgspec.ValidationError as err:
            raise NoetherError("unknown_effect" if "effect" in str(err) else "invalid_effect",
                               f"invalid effect {value!r}: {err}", path=path) from None
        if isinstance(e2, Cost) and e2.cents < 0:
            raise NoetherError("invalid_effect", "Cost cents must be >= 0", path=path)
        if isinstance(e2, FsRead):
            return FsRead(path=_check_fs_path(e2.path, path))
        if isinstance(e2, FsWrite):
            return FsWrite(path=_check_fs_path(e2.path, path))
        return e2
    raise NoetherError("invalid_effect", f"an effect is a name or an object, got {value!r}", path=path)


def parse_effect_list(values: Any, *, path: str = "effects") -> EffectSet:
    """Parse a spec-file ``effects`` array; an empty list means ``{Pure}``."""
    if values is None:
        return EffectSet.pure()
    if isinstance(values, dict) and "effects" in values:
        values = values["effects"]
    if not isinstance(values, list):
        raise NoetherError("invalid_effect", "effects must be an array", path=path)
    effs = [parse_effect(v, path=f"{path}[{i}]") for i, v in enumerate(values)]
    return EffectSet.of(effs) if effs else EffectSet.pure()


def effect_set_from_json(value: Any, *, path: str = "effects") -> EffectSet:
    """Decode the canonical ``{"effects": [...]}`` form (stored stages).

    Order is normalised: upstream's BTreeSet re-sorts on read too.
    """
    try:
        es = msgspec.convert(value, EffectSet)
    except msgspec.ValidationError as err:
        raise NoetherError("invalid_effect", f"invalid effect set: {err}", path=path) from None
    return EffectSet.of(es.effects)

"""Two stage sources seen as one: the first shadows the second."""

from __future__ import annotations

from noether_nix.model.stage import Stage
from noether_nix.store.remote import StageLookup


def _union(first: list[Stage], second: list[Stage]) -> list[Stage]:
    ids = {s.id for s in first}
    return first + [s for s in second if s.id not in ids]


class Layered:
    """``StageLookup`` over ``first`` (the local store) then ``second`` (a registry).

    ``get`` answers from ``first`` when it can. The other queries return the
    stages of both, ``first``'s copy of any stage both hold: so a local stage
    shadows a remote one with the same id, yet a remote Active stage still
    answers a name or signature whose local stages are all tombstoned or
    inactive (resolution asks this view only after the local store alone
    failed)."""

    def __init__(self, first: StageLookup, second: StageLookup) -> None:
        self.first = first
        self.second = second

    def get(self, stage_id: str) -> Stage | None:
        return self.first.get(stage_id) or self.second.get(stage_id)

    def by_prefix(self, prefix: str) -> list[Stage]:
        return _union(self.first.by_prefix(prefix), self.second.by_prefix(prefix))

    def by_signature(self, signature_id: str) -> list[Stage]:
        return _union(self.first.by_signature(signature_id), self.second.by_signature(signature_id))

    def by_name(self, name: str) -> list[Stage]:
        return _union(self.first.by_name(name), self.second.by_name(name))

    def by_legacy(self, ref: str) -> list[Stage]:
        return _union(self.first.by_legacy(ref), self.second.by_legacy(ref))

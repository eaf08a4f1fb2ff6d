"""Two stage sources seen as one: the first shadows the second."""

from __future__ import annotations

from noether_nix.model.stage import Stage
from noether_nix.store.remote import StageLookup


class Layered:
    """``StageLookup`` over ``first`` then ``second``: each query is answered by
    ``first`` when it has any answer, by ``second`` otherwise. So a local stage
    shadows a remote one with the same id, and a local name, signature or
    prefix match hides the remote ones."""

    def __init__(self, first: StageLookup, second: StageLookup) -> None:
        self.first = first
        self.second = second

    def get(self, stage_id: str) -> Stage | None:
        return self.first.get(stage_id) or self.second.get(stage_id)

    def by_prefix(self, prefix: str) -> list[Stage]:
        return self.first.by_prefix(prefix) or self.second.by_prefix(prefix)

    def by_signature(self, signature_id: str) -> list[Stage]:
        return self.first.by_signature(signature_id) or self.second.by_signature(signature_id)

    def by_name(self, name: str) -> list[Stage]:
        return self.first.by_name(name) or self.second.by_name(name)

    def by_legacy(self, ref: str) -> list[Stage]:
        return self.first.by_legacy(ref) or self.second.by_legacy(ref)

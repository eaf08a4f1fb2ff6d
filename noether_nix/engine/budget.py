"""Run-time cost budget (spec §8.1, without its overshoot window).

A stage's declared ``Cost{cents}`` is reserved *before* it starts. The
check-and-add happens synchronously between trio checkpoints, so two
concurrent branches can never both pass a reservation that only one fits.
"""

from __future__ import annotations

from noether_nix.errors import NoetherError


class Budget:
    def __init__(self, limit_cents: int | None) -> None:
        self.limit_cents = limit_cents
        self.spent_cents = 0

    def reserve(self, cents: int, *, stage: str, node_path: str) -> None:
        if cents <= 0:
            return
        if self.limit_cents is not None and self.spent_cents + cents > self.limit_cents:
            raise NoetherError(
                "budget_exceeded",
                f"stage {stage} needs {cents}¢ but only {self.limit_cents - self.spent_cents}¢ of the "
                f"{self.limit_cents}¢ budget remain (spent {self.spent_cents}¢)",
                path=node_path,
                exit_code=2,
                details={"spent_cents": self.spent_cents, "budget_cents": self.limit_cents,
                         "stage_cents": cents},
            )
        self.spent_cents += cents

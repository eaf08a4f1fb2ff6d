"""trio, imported when first used rather than when named.

A one-shot ``noether run`` whose plan needs no event loop
(``Engine.run_without_loop``) never touches trio, whose import alone takes
about as long as a cold sandbox start (~50 ms here). The modules on that
path name it at their top as ``from noether_nix.deferred import trio``: a
stand-in whose first attribute read imports trio (``importlib.import_module``:
under the import system's own lock, so threads racing for it get one fully
imported module, and a failed import leaves nothing half-made behind) and
hands out its attributes from then on. ``sys.modules`` holds only the real
module, once something has used it.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

T = TypeVar("T")


class Deferred:
    """A module imported on the first read of one of its attributes."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._name), attr)
        setattr(self, attr, value)  # read from here on without this hook
        return value

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}{' (imported)' if loaded(self._name) else ''}>"


def loaded(name: str) -> bool:
    """Whether the module ``name`` has been imported (by anything)."""
    return name in sys.modules


if TYPE_CHECKING:
    import trio as trio
else:
    trio = Deferred("trio")


class PerRun(Generic[T]):
    """A value per trio run (a ``trio.lowlevel.RunVar``), made by ``make`` on its first use in
    each run. The RunVar itself is made on first use too: making it at import would import trio."""

    def __init__(self, name: str, make: Callable[[], T]) -> None:
        self._name = name
        self._make = make
        self._var: trio.lowlevel.RunVar[T] | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._var is None:
            with self._lock:  # two trio runs in two threads: one RunVar all the same
                if self._var is None:
                    self._var = trio.lowlevel.RunVar(self._name)
        try:
            return self._var.get()
        except LookupError:
            value = self._make()
            self._var.set(value)
            return value

"""trio, imported when first used rather than when named.

A one-shot ``noether run`` whose plan needs no event loop
(``Engine.run_without_loop``) never touches trio, whose import alone takes
about as long as a cold sandbox start (~50 ms here). The modules on that
path name trio at their top as ``from noether_nix.deferred import trio``:
a module whose code runs on its first attribute access
(``importlib.util.LazyLoader``), in place, so it is the one and only trio
module (``sys.modules``) from then on. A run that needs an event loop loads
it then; one that does not, never.

A plain ``import trio`` of the deferred module loads it (the import system
reads the module's ``__spec__``): fine, just not deferred. Python 3.11's lazy
loading is not safe against two threads loading one module at once; the
first use here is ``trio.run`` on the main thread, before any thread exists
that could use trio.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Generic, TypeVar

T = TypeVar("T")


def deferred(name: str) -> ModuleType:
    """The module ``name``: imported already, or one that loads on its first use."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def loaded(name: str) -> bool:
    """Whether ``name`` is imported and its code has run (a deferred module never used has not)."""
    module = sys.modules.get(name)
    # type(), not isinstance: reading a deferred module's __class__ would load it.
    return module is not None and type(module) is not importlib.util._LazyModule  # type: ignore[attr-defined]


if TYPE_CHECKING:
    import trio as trio
else:
    trio = deferred("trio")


class PerRun(Generic[T]):
    """A value per trio run (a ``trio.lowlevel.RunVar``), made by ``make`` on its first use in
    each run. The RunVar itself is made on first use too: making it at import would load trio."""

    def __init__(self, name: str, make: Callable[[], T]) -> None:
        self._name = name
        self._make = make
        self._var: trio.lowlevel.RunVar[T] | None = None

    def get(self) -> T:
        if self._var is None:
            self._var = trio.lowlevel.RunVar(self._name)
        try:
            return self._var.get()
        except LookupError:
            value = self._make()
            self._var.set(value)
            return value

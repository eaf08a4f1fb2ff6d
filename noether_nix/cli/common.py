"""Helpers shared by CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.store.stages import StageStore


def read_json_file(path: str, *, what: str = "file") -> Any:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise NoetherError("file_not_found", f"{what} not found", path=path) from None
    except OSError as e:
        raise NoetherError("io_error", f"cannot read {what}: {e.strerror}", path=path) from None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as e:
        raise NoetherError("invalid_json", f"{what} is not valid JSON: {e}", path=path) from None


def parse_json_arg(text: str, *, what: str) -> Any:
    try:
        return msgspec.json.decode(text.encode())
    except msgspec.DecodeError as e:
        raise NoetherError("invalid_json", f"{what} is not valid JSON: {e}", path=what) from None


def open_store() -> StageStore:
    from noether_nix.store.stdlib_seed import ensure_stdlib

    store = StageStore()
    ensure_stdlib(store)
    return store

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CATALOG_PATH = Path(__file__).resolve().parents[3] / "shared" / "spec" / "stdlib-catalog.json"


def load_catalog() -> list[dict[str, Any]]:
    if not CATALOG_PATH.exists():
        pytest.skip(f"shared stdlib catalog not found at {CATALOG_PATH}")
    catalog: list[dict[str, Any]] = json.loads(CATALOG_PATH.read_text("utf-8"))
    return catalog

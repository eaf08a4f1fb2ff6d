"""Regenerate ``definitions.json`` from upstream's stdlib catalog.

Usage: python -m noether_nix.stdlib._gen_defs ../shared/spec/stdlib-catalog.json

Identity fields (ids, hashes, signatures) are dropped: the store recomputes
them from the definitions, and a test compares them with the catalog.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEEP = ("name", "description", "module", "input", "output", "effects", "examples", "tags",
        "aliases", "properties", "capabilities", "cost")


def main(argv: list[str]) -> int:
    catalog = json.loads(Path(argv[0]).read_text())
    defs = [{k: entry[k] for k in KEEP if k in entry} for entry in catalog]
    out = Path(__file__).with_name("definitions.json")
    out.write_text(json.dumps(defs, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(defs)} definitions to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

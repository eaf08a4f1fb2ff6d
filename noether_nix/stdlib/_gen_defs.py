"""Regenerate ``definitions.json`` from upstream's stdlib catalog.

Usage: python -m noether_nix.stdlib._gen_defs /work/shared/spec/stdlib-catalog.json [OUT]

Identity fields (ids, hashes, signatures) are dropped: the store recomputes
them from the definitions (``store/stdlib_seed.py``), and a test compares
them with the catalog. Catalog order and int/float literals are kept.
"""

import os
import sys

# Run as a file, this directory would come first on sys.path and its
# collections.py / io.py would shadow the standard library's.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import json
from pathlib import Path
from typing import Any

KEEP = ("name", "description", "module", "input", "output", "effects", "examples", "tags",
        "aliases", "properties", "capabilities", "cost")


def definitions(catalog: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: entry[k] for k in KEEP if k in entry} for entry in catalog]


def render(defs: list[dict[str, Any]]) -> str:
    return json.dumps(defs, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    catalog = json.loads(Path(argv[0]).read_text("utf-8"))
    defs = definitions(catalog)
    out = Path(argv[1]) if len(argv) == 2 else Path(__file__).with_name("definitions.json")
    out.write_text(render(defs), "utf-8")
    print(f"wrote {len(defs)} definitions to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Regenerate the protobuf modules beside this file from its ``.proto`` files.

    .venv/bin/python -m noether_nix.remote.protos.generate

The generated ``*_pb2.py`` (and ``.pyi`` stubs for mypy) are committed (tests/remote checks
they match): installing noether-nix needs no code generator, and a change to
the wire schema shows up as a reviewable diff.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTOS = ("noether_reapi.proto", "noether_rwapi.proto", "noether_bytestream.proto")


def protoc_args(out: Path) -> list[str]:
    import google.rpc  # googleapis-common-protos: google/rpc/status.proto
    import grpc_tools

    here = Path(__file__).parent
    common = Path(google.rpc.__path__[0]).parent.parent
    wkt = Path(str(resources.files(grpc_tools) / "_proto"))
    return ["protoc", f"-I{here}", f"-I{common}", f"-I{wkt}", f"--python_out={out}", f"--pyi_out={out}",
            *(str(here / p) for p in PROTOS)]


def generate(out: Path) -> None:
    from grpc_tools import protoc

    rc = protoc.main(protoc_args(out))
    if rc != 0:
        raise SystemExit(f"protoc failed with status {rc}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)

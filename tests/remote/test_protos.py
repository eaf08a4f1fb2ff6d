"""The committed protobuf modules are what the committed .proto files compile to,
and they speak the upstream wire format."""

from __future__ import annotations

from pathlib import Path

from noether_nix.remote.protos import generate
from noether_nix.remote.protos import noether_reapi_pb2 as re

HERE = Path(generate.__file__).parent


def test_generated_modules_are_current(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    for proto in generate.PROTOS:
        stem = proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi"):
            name = stem + suffix
            assert (tmp_path / name).read_text() == (HERE / name).read_text(), \
                f"{name} is stale: run python -m noether_nix.remote.protos.generate"


def test_upstream_names_for_any_type_urls() -> None:
    # Servers pack and unpack these by full name (google.protobuf.Any).
    assert re.Action.DESCRIPTOR.full_name == "build.bazel.remote.execution.v2.Action"
    assert re.ExecuteResponse.DESCRIPTOR.full_name == "build.bazel.remote.execution.v2.ExecuteResponse"


def test_unknown_fields_survive_a_round_trip() -> None:
    # An ActionResult with a field we do not declare (output_directories = 3).
    extra = b"\x1a\x04\x0a\x02ab"
    msg = re.ActionResult()
    msg.ParseFromString(extra + re.ActionResult(exit_code=1).SerializeToString())
    assert msg.exit_code == 1
    assert extra in msg.SerializeToString()

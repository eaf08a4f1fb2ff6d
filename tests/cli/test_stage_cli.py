"""`noether stage …` and `noether store …` through the real CLI process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SPEC = {
    "name": "add1",
    "input": "Number",
    "output": "Number",
    "implementation": "def execute(x):\n    return x + 1\n",
    "examples": [{"input": 1, "output": 2}],
    "tags": ["add-one-test"],
}


def noether(*args: str, check_rc: int | None = 0) -> tuple[int, Any, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "noether_nix.cli.main", *args], capture_output=True, text=True, timeout=60
    )
    # Exactly one envelope, on stdout, ok or not; stderr carries no envelope.
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    assert not proc.stderr.strip().startswith("{"), proc.stderr
    err = out if isinstance(out, dict) and out.get("ok") is False else proc.stderr
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.stdout, proc.stderr)
    return proc.returncode, out, err


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    p = tmp_path / "add1.json"
    p.write_text(json.dumps(SPEC))
    return p


def test_stage_add_get_list_verify(spec_file: Path) -> None:
    _, out, _ = noether("stage", "add", str(spec_file))
    assert out["ok"] is True and out["command"] == "stage add"
    assert out["data"]["lifecycle"] == "active"
    assert out["data"]["program"]["built"] is True
    assert out["data"]["program"]["store_path"].startswith("/nix/store/")
    assert isinstance(out["meta"]["duration_ms"], int)
    sid = out["data"]["id"]

    _, again, _ = noether("stage", "add", str(spec_file))
    assert again["data"] == {"id": sid, "lifecycle": "active", "note": "already exists"}

    _, got, _ = noether("stage", "get", sid[:10])
    assert got["data"]["id"] == sid and got["data"]["ed25519_signature"]

    _, listed, _ = noether("stage", "list", "--tag", "add-one-test")
    assert [s["name"] for s in listed["data"]["stages"]] == ["add1"]

    _, verified, _ = noether("stage", "verify", "add1")
    assert verified["data"]["passed"] == 1


def test_draft_then_activate(spec_file: Path) -> None:
    _, out, _ = noether("stage", "add", str(spec_file), "--draft", "--no-build")
    assert out["data"]["lifecycle"] == "draft"
    _, act, _ = noether("stage", "activate", out["data"]["id"])
    assert act["data"]["lifecycle"] == "active"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ("{not json", "invalid_json"),
        (json.dumps({**SPEC, "input": {"kind": "Nope"}}), "invalid_type"),
        (json.dumps({**SPEC, "effects": ["Teleport"]}), "unknown_effect"),
        (json.dumps({**SPEC, "implementation": "x = 1\n"}), "missing_execute"),
    ],
)
def test_bad_spec_is_rejected_and_store_unchanged(tmp_path: Path, content: str, code: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content)
    _, before, _ = noether("store", "export")
    rc, out, err = noether("stage", "add", str(p), check_rc=1)
    assert out is err and "data" not in out
    assert err["ok"] is False and err["error"]["code"] == code
    assert err["error"]["message"]
    _, after, _ = noether("store", "export")
    assert after["data"] == before["data"]


def test_tombstone_cannot_come_back(spec_file: Path) -> None:
    _, out, _ = noether("stage", "add", str(spec_file))
    sid = out["data"]["id"]
    noether("stage", "tombstone", sid)
    rc, _, err = noether("stage", "activate", sid, check_rc=1)
    assert err["error"]["code"] == "invalid_transition"
    assert "cannot move a Tombstone stage to Active" in err["error"]["message"]


def test_export_import_round_trip(spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    noether("stage", "add", str(spec_file))
    dump = tmp_path / "store.json"
    noether("store", "export", "-o", str(dump))
    doc = json.loads(dump.read_text())
    assert any(s.get("name") == "add1" for s in doc["stages"])
    monkeypatch.setenv("NOETHER_HOME", str(tmp_path / "other-home"))
    _, out, _ = noether("store", "import", str(dump))
    assert out["data"]["counts"]["imported"] + out["data"]["counts"]["skipped"] == len(doc["stages"])
    _, got, _ = noether("stage", "get", "add1")
    assert got["data"]["name"] == "add1"


def test_import_with_one_bad_entry_imports_nothing(spec_file: Path, tmp_path: Path) -> None:
    noether("stage", "add", str(spec_file))
    dump = tmp_path / "store.json"
    noether("store", "export", "-o", str(dump))
    doc = json.loads(dump.read_text())
    good = next(s for s in doc["stages"] if s.get("name") == "add1")
    forged = dict(good, description="x", id="f" * 64)
    bad = tmp_path / "bad-store.json"
    bad.write_text(json.dumps({"stages": [good, forged]}))
    rc, _, err = noether("store", "import", str(bad), check_rc=1)
    assert err["error"]["code"] == "import_failed"
    assert err["error"]["details"]["failed"][0]["index"] == 1


def test_usage_error_exit_2() -> None:
    rc, _, err = noether("stage", "frobnicate", check_rc=2)
    assert err["error"]["code"] == "usage"

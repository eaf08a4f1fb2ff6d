"""The settings tree: one file, the environment over it, checked."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from noether_nix.engine.engine import Engine, engine_limits
from noether_nix.engine.options import RunOptions
from noether_nix.errors import NoetherError
from noether_nix.sandbox.policy import Limits
from noether_nix.sandbox.profile import load_profile
from noether_nix.settings import EngineSettings, Settings, build, configure, read_file, settings


def test_a_file_with_comments_and_the_environment_over_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "daemon.json"
    cfg.write_text(json.dumps({"//": "a comment", "max_runs": 3, "_note": "also a comment",
                               "engine": {"//run_concurrency": "doc", "run_concurrency": 2},
                               "nix": {"build_concurrency": 1}}))
    monkeypatch.setenv("NOETHER_BUILD_CONCURRENCY", "4")
    monkeypatch.setenv("NOETHER_SANDBOX_PROFILES", "/a:/b")
    try:
        got = configure(str(cfg))
        assert got.max_runs == 3 and got.engine.run_concurrency == 2
        assert got.nix.build_concurrency == 4  # the environment wins over the file
        assert got.sandbox.profiles_path == ["/a", "/b"]
        monkeypatch.setenv("NOETHER_BUILD_CONCURRENCY", "5")
        assert settings().nix.build_concurrency == 5  # read again when the environment changes
    finally:
        configure(None)


def test_toml_works_too(tmp_path: Path) -> None:
    cfg = tmp_path / "noether.toml"
    cfg.write_text('max_runs = 5\n[engine]\nisolation = "bwrap"\n')
    assert build(read_file(str(cfg)), environ={}).engine.isolation == "bwrap"


@pytest.mark.parametrize(("doc", "says"), [
    ({"max_run": 3}, "max_run"),  # unknown key: an error naming it
    ({"max_runz": 3}, "unknown field `max_runz`; did you mean `max_runs`?"),
    ({"engine": {"timeout_sec": 3}}, "unknown field `timeout_sec` - at `$.engine`; did you mean `timeout_secs`?"),
    ({"engine": {"isolation": "docker"}}, "use one of: auto, bwrap, none"),
    ({"nix": {"build_concurrency": "many"}}, "$.nix.build_concurrency"),
])
def test_bad_settings_are_errors_that_say_where(tmp_path: Path, doc: dict[str, object], says: str) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(doc))
    with pytest.raises(NoetherError) as ei:
        build(read_file(str(cfg)), environ={}, source=str(cfg))
    assert ei.value.code == "invalid_config" and says in ei.value.message and ei.value.path == str(cfg)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(NoetherError) as ei:
        read_file(str(tmp_path / "missing.json"))
    assert ei.value.code == "config_unreadable"
    (tmp_path / "x.toml").write_text("= nope")
    with pytest.raises(NoetherError) as ei:
        read_file(str(tmp_path / "x.toml"))
    assert ei.value.code == "invalid_config"


def test_limits_come_from_the_profile_and_stop_at_its_maxima() -> None:
    profile = load_profile("default")
    # The sandbox layer's own defaults are the packaged profile's: one set of numbers.
    assert msgspec.structs.asdict(Limits()) == {k: v for k, v in profile.defaults.items()}
    assert engine_limits(EngineSettings(), profile) == Limits()
    raised = engine_limits(EngineSettings(timeout_secs=600, memory_bytes=2 << 30), profile)
    assert raised.timeout_s == 600 and raised.memory_bytes == 2 << 30  # an operator may raise up to the maxima
    with pytest.raises(NoetherError) as ei:
        engine_limits(EngineSettings(timeout_secs=profile.maxima["timeout_s"] + 1), profile)
    assert ei.value.code == "invalid_config" and "maximum" in ei.value.message
    # A run may lower them, never raise them: asking for more is an error that says so, not a silent cap.
    engine = Engine(EngineSettings(timeout_secs=20))
    assert engine.limits_for(RunOptions(timeout_secs=5)).timeout_s == 5
    with pytest.raises(NoetherError) as ei:
        engine.limits_for(RunOptions(timeout_secs=500))
    assert (ei.value.code, ei.value.exit_code, ei.value.path) == ("invalid_limit", 2, "options.timeout_secs")
    assert ei.value.message == ("--timeout-secs 500 is over the 20 s maximum here: a run may lower the per-stage "
                                "limit, not raise it")


def test_the_default_tree_is_what_an_empty_file_gives() -> None:
    assert build({}, environ={}) == Settings()


@pytest.mark.parametrize("doc,env,vouches", [
    ({}, {}, True),
    ({"local": True, "socket": "/s", "max_runs": 3, "engine": {"run_concurrency": 2, "remote": {"url": None}},
      "//": "comment", "_x": 1}, {}, True),
    ({"local": True}, {"NOETHER_LOCAL": "0"}, True),
    ({"socket": "/file"}, {"NOETHER_SOCKET": "/env"}, True),
    ({"socket": "/file"}, {"NOETHER_SOCKET": ""}, True),
    ({}, {"NOETHER_LOCAL": "yes", "NOETHER_BUILD_CONCURRENCY": "4"}, True),
    ({"lokal": True}, {}, False),  # a misspelt key: the tree's error, with its suggestion
    ({"engine": {"run_concurency": 2}}, {}, False),
    ({"engine": {"remote": {"urll": "x"}}}, {}, False),
    ({"local": "true"}, {}, False),  # not a bool: the tree decides
    ({"socket": 5}, {}, False),
    ({"engine": 3}, {}, False),
])
def test_a_client_reads_local_and_socket_as_the_tree_does(tmp_path: Path, doc: dict[str, object],
                                                          env: dict[str, str], vouches: bool) -> None:
    """``settings_view.plain_client_settings`` (a daemon client, no msgspec) gives what the tree gives, or
    defers to it."""
    from noether_nix.settings_view import plain_client_settings

    cfg = tmp_path / "settings.json"
    cfg.write_text(json.dumps(doc))
    environ = {**env, "NOETHER_CONFIG": str(cfg)}
    plain = plain_client_settings(environ)
    assert (plain is not None) == vouches
    if plain is not None:
        tree = build(read_file(str(cfg)), environ=environ)
        assert plain == (tree.local, tree.socket)


def test_a_client_defers_to_the_tree_for_a_file_it_cannot_read(tmp_path: Path) -> None:
    from noether_nix.settings_view import plain_client_settings

    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert plain_client_settings({"NOETHER_CONFIG": str(bad)}) is None
    assert plain_client_settings({"NOETHER_CONFIG": str(tmp_path / "missing.json")}) is None
    toml = tmp_path / "c.toml"
    toml.write_text('local = true\n[engine]\nisolation = "bwrap"\n')
    assert plain_client_settings({"NOETHER_CONFIG": str(toml)}) == (True, None)

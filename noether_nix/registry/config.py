"""The registry server's configuration: environment variables, overridden by flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.graph.preflight import parse_capability_tokens, parse_effect_tokens
from noether_nix.paths import noether_home
from noether_nix.registry.embeddings import EmbeddingConfig
from noether_nix.registry.embeddings import config_from_env as embedding_config_from_env

DEFAULT_BIND = "127.0.0.1:3000"
DEFAULT_RUN_EFFECTS = ("pure", "fallible", "non-deterministic")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class RegistryConfig(msgspec.Struct, kw_only=True):
    bind: str = DEFAULT_BIND
    #: PostgreSQL when set (``postgresql://…``); SQLite at ``store_path`` otherwise.
    database_url: str | None = None
    store_path: str = ""
    #: Every ``*.json`` spec under it is loaded at start.
    stages_dir: str | None = None
    #: None: writes are refused. "": no authentication (logged loudly). Else the X-API-Key value.
    api_key: str | None = None
    allow_unsigned_active: bool = False
    seed_stdlib: bool = True
    max_body_bytes: int = 4 * 1024 * 1024
    #: Reading the request and answering it (runs have their own limit).
    request_timeout_s: float = 30.0
    run_timeout_s: float = 300.0
    max_concurrent_runs: int = 2
    #: An idle keep-alive connection is closed after this long; one read waits at most read_timeout_s.
    keep_alive_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    #: Where POST /compositions/run keeps its engine state (Nix programs, pure cache, runs).
    work_home: str = ""
    #: The effects and capabilities a run's stages may have (a run may ask for less,
    #: never more): its sandboxes run on this host, as this registry's user, for
    #: anyone with the key. Network, FsRead / FsWrite, Process, Llm only if listed.
    run_effects: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_RUN_EFFECTS))
    run_capabilities: list[str] = msgspec.field(default_factory=list)
    embeddings: EmbeddingConfig | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_bind(self.bind)


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", bind
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise NoetherError("invalid_config", f"--bind {bind!r}: expected HOST:PORT with a port 0-65535",
                           path="NOETHER_BIND")
    return host, number


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise NoetherError("invalid_config", f"{name} must be 1/0, true/false, yes/no or on/off", path=name)


def _number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise NoetherError("invalid_config", f"{name} must be a number", path=name) from None
    if not lo <= value <= hi:
        raise NoetherError("invalid_config", f"{name} must be between {lo:g} and {hi:g}", path=name)
    return value


def _tokens(env: Mapping[str, str], name: str, default: list[str], parse: Any) -> list[str]:
    """A comma-separated list of effect or capability names, checked."""
    raw = env.get(name)
    if raw is None:
        return default
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    try:
        parse(tokens)
    except NoetherError as e:
        raise NoetherError("invalid_config", f"{name}: {e.message}", path=name) from None
    return tokens


def config_from_env(env: Mapping[str, str] | None = None) -> RegistryConfig:
    env = os.environ if env is None else env
    home = noether_home()
    cfg = RegistryConfig(
        bind=env.get("NOETHER_BIND") or DEFAULT_BIND,
        database_url=env.get("DATABASE_URL") or None,
        store_path=env.get("NOETHER_STORE_PATH") or str(home / "registry.db"),
        stages_dir=env.get("NOETHER_STAGES_DIR") or None,
        api_key=env.get("NOETHER_API_KEY"),
        allow_unsigned_active=_flag(env, "NOETHER_REGISTRY_ALLOW_UNSIGNED", False),
        seed_stdlib=_flag(env, "NOETHER_REGISTRY_SEED_STDLIB", True),
        max_body_bytes=int(_number(env, "NOETHER_REGISTRY_MAX_BODY_BYTES", 4 * 1024 * 1024, 1024, 1 << 30)),
        request_timeout_s=_number(env, "NOETHER_REGISTRY_REQUEST_TIMEOUT_S", 30.0, 0.1, 3600),
        run_timeout_s=_number(env, "NOETHER_REGISTRY_RUN_TIMEOUT_S", 300.0, 0.1, 86400),
        max_concurrent_runs=int(_number(env, "NOETHER_REGISTRY_MAX_RUNS", 2, 0, 1024)),
        keep_alive_timeout_s=_number(env, "NOETHER_REGISTRY_KEEPALIVE_S", 5.0, 0.1, 3600),
        read_timeout_s=_number(env, "NOETHER_REGISTRY_READ_TIMEOUT_S", 10.0, 0.1, 3600),
        work_home=env.get("NOETHER_REGISTRY_WORK_HOME") or str(home / "registry-work"),
        embeddings=embedding_config_from_env(env),
        run_effects=_tokens(env, "NOETHER_REGISTRY_RUN_EFFECTS", list(DEFAULT_RUN_EFFECTS), parse_effect_tokens),
        run_capabilities=_tokens(env, "NOETHER_REGISTRY_RUN_CAPABILITIES", [], parse_capability_tokens),
    )
    parse_bind(cfg.bind)
    if cfg.stages_dir and not Path(cfg.stages_dir).is_dir():
        raise NoetherError("invalid_config", "NOETHER_STAGES_DIR is not a directory", path=cfg.stages_dir)
    return cfg

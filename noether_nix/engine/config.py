"""Engine configuration: the daemon's (or embedded run's) ceilings.

Per-run options may lower these limits, never raise them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.remote.settings import RemoteSettings

IsolationMode = Literal["auto", "bwrap", "none"]


class EngineConfig(msgspec.Struct, kw_only=True):
    #: "auto" = bwrap, refusing sandboxed stages when it is unusable (fail closed).
    isolation: IsolationMode = "auto"
    sandbox_profile: str = "default"
    timeout_secs: float = 30.0
    max_output_bytes: int = 10 * 1024 * 1024
    max_stderr_bytes: int = 64 * 1024
    memory_bytes: int = 512 * 1024 * 1024
    max_pids: int = 128
    #: Stages running at once in one run, and across the whole process.
    run_concurrency: int = 8
    process_concurrency: int = 16
    #: The largest value (a run's input, a stage's input or output) in bytes of JSON.
    max_value_bytes: int = 32 * 1024 * 1024
    #: Run history: finished runs kept (oldest dropped first), their total size,
    #: and the size one stored run (trace and events) is cut to.
    max_stored_runs: int = 10_000
    max_stored_runs_bytes: int = 1024 * 1024 * 1024
    max_stored_run_bytes: int = 16 * 1024 * 1024
    pure_cache: bool = True
    pure_cache_max_entries: int = 100_000
    refinement_checks: bool = True
    #: Concurrent Nix builds.
    build_concurrency: int = 2
    build_timeout_secs: float = 300.0
    #: Where sandboxed stage calls run: on this host ("local"), or as Actions
    #: on a Remote Execution API cluster ("remote", configured by ``remote``).
    executor: Literal["local", "remote"] = "local"
    remote: RemoteSettings | None = None

    def __post_init__(self) -> None:
        if self.executor == "remote" and self.remote is None:
            raise NoetherError("invalid_config", 'executor "remote" needs a "remote" section with at least a "url"',
                               path="executor", exit_code=2)


def load_config(path: str | None) -> EngineConfig:
    if path is None:
        return EngineConfig()
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise NoetherError("config_unreadable", f"cannot read config: {e.strerror}", path=path) from None
    try:
        if path.endswith(".toml"):
            import tomllib

            return msgspec.convert(tomllib.loads(raw.decode()), EngineConfig)
        return msgspec.json.decode(raw, type=EngineConfig)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as e:
        raise NoetherError("invalid_config", f"invalid config: {e}", path=path) from None

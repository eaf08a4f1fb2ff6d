"""One settings tree: the daemon's configuration file and the environment.

Every knob noether has is a field here, with its default and a sentence
(``msgspec.Meta(description=…)``) that the documented configuration file
(``noether service install``) is generated from. The tree is read from a
JSON or TOML file once (``configure``: the daemon's ``--config``, or
``$NOETHER_CONFIG``) and the ``NOETHER_*`` variables in ``ENVIRONMENT`` are
laid over it; ``settings()`` returns the result. Unknown keys are errors;
keys starting with ``//`` or ``_`` are comments.

Stage limits come from the sandbox profile (its ``defaults``, capped at its
``maxima``); the ``engine`` fields here that set limits are overrides of
the profile's defaults, refused above its maxima.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from noether_nix.errors import NoetherError
from noether_nix.settings_view import ENVIRONMENT, env_value, strip_comments
from noether_nix.suggest import did_you_mean


def _d(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class RemoteSettings(_Section):
    url: Annotated[str | None, _d(
        "the REAPI v2 cluster: grpc://host:port, grpcs://host:port (TLS) or unix:/path; null: none")] = None
    instance: Annotated[str, _d("its instance name")] = ""
    tls_ca: Annotated[str | None, _d("PEM roots that verify the server (grpcs://); null: the system's")] = None
    tls_cert: Annotated[str | None, _d("client certificate (PEM) for mutual TLS")] = None
    tls_key: Annotated[str | None, _d("client key (PEM) for mutual TLS")] = None
    token_file: Annotated[str | None, _d("a file holding a bearer token sent with every call")] = None
    profile: Annotated[str, _d(
        "the sandbox profile Actions are encoded for (set from engine.sandbox_profile; workers must run the "
        "same)")] = "default"
    queue_timeout_s: Annotated[float, _d(
        "seconds an Action may wait for a worker that offers its platform (then remote_no_worker)")] = 600.0
    reconnect_s: Annotated[float, _d(
        "seconds to keep following an operation through a server that went away")] = 60.0


class EngineSettings(_Section):
    isolation: Annotated[Literal["auto", "bwrap", "none"], _d(
        "auto (bwrap, refusing sandboxed stages when it is unusable), bwrap, or none")] = "auto"
    sandbox_profile: Annotated[str, _d(
        "sandbox profile name (searched in sandbox.profiles_path, /etc/noether/sandboxes, the package) "
        "or a path to a profile file")] = "default"
    timeout_secs: Annotated[float | None, _d(
        "wall-clock seconds per stage; null: the profile's default (a run may lower it)")] = None
    max_output_bytes: Annotated[int | None, _d("bytes of stdout a stage may write; null: the profile's")] = None
    max_stderr_bytes: Annotated[int | None, _d("bytes of stderr kept per stage; null: the profile's")] = None
    memory_bytes: Annotated[int | None, _d(
        "memory cap per sandbox (cgroup memory.max / memory.limit_in_bytes); null: the profile's")] = None
    max_pids: Annotated[int | None, _d("process cap per sandbox (cgroup pids.max); null: the profile's")] = None
    run_concurrency: Annotated[int, _d("stages running at once in one run")] = 8
    process_concurrency: Annotated[int, _d("sandboxed stages running at once in this process")] = 16
    warm_sandboxes: Annotated[int, _d(
        "warm sandboxes kept at once (a pre-started sandboxed interpreter per Python program, policy and peer, "
        "forking a fresh child per call; docs/security.md); 0: every sandboxed call starts cold")] = 8
    warm_idle_secs: Annotated[float, _d("seconds an idle warm sandbox is kept")] = 60.0
    in_process_threads: Annotated[int, _d(
        "worker threads for in-process work too large or too unpredictable for the daemon's event loop (pure "
        "stages on large values or with regular expressions, kv and store stages, checking large values)")] = 4
    max_value_bytes: Annotated[int, _d(
        "the largest value (a run's input, a stage's input or output), in bytes of JSON")] = 32 * 1024 * 1024
    max_stored_runs: Annotated[int, _d("finished runs kept in the history (the oldest go first)")] = 10_000
    max_stored_runs_bytes: Annotated[int, _d("total size of the run history, in bytes")] = 1024 * 1024 * 1024
    max_stored_run_bytes: Annotated[int, _d(
        "the size one stored run (trace and events) is cut to, in bytes")] = 16 * 1024 * 1024
    pure_cache: Annotated[bool, _d("whether pure stages' results are cached")] = True
    pure_cache_max_entries: Annotated[int, _d("entries kept in the pure cache")] = 100_000
    refinement_checks: Annotated[bool, _d("whether refinement types are checked at run time")] = True
    output_type_checks: Annotated[bool, _d(
        "whether a stage's output must be of its declared output type (output_type_mismatch); off: "
        "upstream's behaviour, which lets it through")] = True
    executor: Annotated[Literal["local", "remote"], _d(
        "where sandboxed stage calls run: on this host (local), or as Actions on the REAPI cluster named by "
        "engine.remote (remote; docs/scale-out.md)")] = "local"
    remote: Annotated[RemoteSettings, _d("the REAPI cluster for executor remote")] = \
        msgspec.field(default_factory=RemoteSettings)

    def __post_init__(self) -> None:
        if self.executor == "remote" and not self.remote.url:
            raise NoetherError("invalid_config", 'engine.executor "remote" needs engine.remote.url '
                               "(or --reapi URL, $NOETHER_REAPI)", path="engine.executor")


class NixSettings(_Section):
    runtime_source: Annotated[Literal["host-import", "nixpkgs"], _d(
        "where language runtimes come from: host-import (the host's interpreters imported into the store, "
        "works offline) or nixpkgs (pinned nixpkgs; needs it reachable)")] = "host-import"
    nixpkgs: Annotated[str | None, _d(
        "the nixpkgs to build runtimes from when runtime_source is nixpkgs (a path or a pinned tarball URL); "
        "null: the pin shipped with noether-nix")] = None
    gcroots: Annotated[str | None, _d(
        "directory of the machine-wide GC roots of imported runtimes; null: "
        "/nix/var/nix/gcroots/noether (per user when that is not writable)")] = None
    build_concurrency: Annotated[int, _d("Nix builds running at once")] = 2
    build_timeout_secs: Annotated[float, _d("seconds one Nix build may take")] = 300.0
    allow_unpinned_pip: Annotated[bool, _d(
        "let `# requires:` lines name unpinned Python packages (their build is then not reproducible)")] = False


class SandboxSettings(_Section):
    allow_without_limits: Annotated[bool, _d(
        "run sandboxes even where no memory or process-count limit can be enforced (no writable cgroup); "
        "off, such runs are refused (limits_unavailable) and the daemon does not start")] = False
    profiles_path: Annotated[list[str], _d(
        "directories searched first for sandbox profiles (then /etc/noether/sandboxes, the package)")] = \
        msgspec.field(default_factory=list)


class RegistrySettings(_Section):
    url: Annotated[str | None, _d(
        "a stage registry merged with the local store: listed, searched, and resolved from when the store "
        "lacks a stage (fetched stages are verified and cached); null: none")] = None
    api_key: Annotated[str | None, _d(
        "the registry key: with it, stage add / sync / lifecycle changes go to the registry")] = None
    timeout_s: Annotated[float, _d("seconds one registry request may take")] = 30.0


class Settings(_Section):
    # ---- where things are
    home: Annotated[str | None, _d(
        "the state directory (store, traces, author key); null: ~/.noether, /var/lib/noether as a "
        "service")] = None
    socket: Annotated[str | None, _d(
        "the daemon's socket (where it listens when not socket-activated, and where clients look); null: "
        "$XDG_RUNTIME_DIR/noether.sock, /run/noether/noether.sock for root")] = None
    local: Annotated[bool, _d("clients run embedded even when a daemon is live")] = False
    # ---- the daemon
    socket_mode: Annotated[int, _d("socket file mode when not socket-activated (432 = 0o660)")] = 0o660
    allowed_uids: Annotated[list[int] | None, _d(
        "uids that may connect; null: the daemon's own uid and root")] = None
    allowed_gids: Annotated[list[int], _d(
        "gids whose members may connect (primary or supplementary group)")] = msgspec.field(default_factory=list)
    allowed_groups: Annotated[list[str], _d(
        "group names whose members may connect, resolved at start (noether.socket's SocketGroup)")] = \
        msgspec.field(default_factory=list)
    write_uids: Annotated[list[int] | None, _d(
        "uids that may change the store, run unsigned stages, grant file access and (with "
        "allow_unsandboxed_runs) run without a sandbox; null: allowed_uids")] = None
    max_body_bytes: Annotated[int, _d("largest request body accepted")] = 8 * 1024 * 1024
    header_timeout_s: Annotated[float, _d("seconds a client has to send its request")] = 10.0
    max_connections: Annotated[int, _d("connections served at once")] = 256
    max_runs: Annotated[int, _d("runs executing at once")] = 16
    max_queued_runs: Annotated[int, _d("runs waiting for a slot before new ones are refused (busy)")] = 64
    max_connections_per_peer: Annotated[int, _d(
        "connections one peer (uid) may hold open; past it: 429 too_many_connections")] = 64
    max_runs_per_peer: Annotated[int, _d("runs of one peer executing at once (the rest wait their turn)")] = 8
    max_queued_runs_per_peer: Annotated[int, _d(
        "runs of one peer waiting for a slot; past it: 429 too_many_runs")] = 16
    grace_s: Annotated[float, _d(
        "seconds runs in flight get to finish on stop before they are cancelled (keep below the unit's "
        "TimeoutStopSec=45)")] = 30.0
    send_timeout_s: Annotated[float, _d(
        "seconds a streaming client may stop reading before its run counts as abandoned")] = 30.0
    allow_unsandboxed_runs: Annotated[bool, _d(
        "whether a writer (write_uids) may ask for isolate: none (stages then run as the daemon's user); "
        "other peers never may")] = False
    log_level: Annotated[Literal["debug", "info", "warning", "error"], _d("log lines below this level are dropped")] = "info"
    # ---- everything runs share
    engine: Annotated[EngineSettings, _d("ceilings for every run; a run may lower them, never raise them")] = \
        msgspec.field(default_factory=EngineSettings)
    nix: Annotated[NixSettings, _d("Nix: runtimes and builds")] = msgspec.field(default_factory=NixSettings)
    sandbox: Annotated[SandboxSettings, _d("sandbox profiles")] = msgspec.field(default_factory=SandboxSettings)
    registry: Annotated[RegistrySettings, _d("a remote stage registry (noether registry serve)")] = \
        msgspec.field(default_factory=RegistrySettings)


def read_file(path: str) -> dict[str, Any]:
    """A settings file's document (JSON, or TOML by its suffix), comments dropped."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise NoetherError("config_unreadable", f"cannot read config: {e.strerror}", path=path) from None
    try:
        if path.endswith(".toml"):
            import tomllib

            doc = tomllib.loads(raw.decode())
        else:
            doc = msgspec.json.decode(raw)
    except (msgspec.DecodeError, ValueError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise NoetherError("invalid_config", f"config is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: "
                           f"{e}", path=path) from None
    if not isinstance(doc, dict):
        raise NoetherError("invalid_config", "config must be an object of settings", path=path)
    return strip_comments(doc)  # type: ignore[no-any-return]


def build(doc: dict[str, Any], environ: dict[str, str] | os._Environ[str] | None = None, *,
          source: str = "settings") -> Settings:
    """``doc`` with the environment laid over it, as a checked tree."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    env = os.environ if environ is None else environ
    for name, where in ENVIRONMENT.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        node = merged
        for key in where[:-1]:
            node = node.setdefault(key, {})
        node[where[-1]] = env_value(name, raw)
    try:
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as e:
        # Name the environment variable when one set the value that is wrong.
        culprit = next((name for name, where in ENVIRONMENT.items() if env.get(name)
                        and f"`$.{'.'.join(where)}`" in str(e)), None)
        raise NoetherError("invalid_config", f"invalid settings: {e}{_choices(str(e))}",
                           path=culprit or source) from None


def _choices(error: str) -> str:
    """", use one of …" when the setting the error is about takes one of a few words;
    "; did you mean `x`?" for a misspelt key."""
    kind: Any = msgspec.inspect.type_info(Settings)
    if error.startswith("Object contains unknown field `"):
        unknown = error[len("Object contains unknown field `"):].partition("`")[0]
        section = error.partition(" - at `$")[2].rstrip("`").strip(".")
        for part in [p for p in section.split(".") if p]:
            while isinstance(kind, msgspec.inspect.Metadata):
                kind = kind.type
            kind = next((f.type for f in getattr(kind, "fields", ()) if f.encode_name == part), None)
        while isinstance(kind, msgspec.inspect.Metadata):
            kind = kind.type
        return did_you_mean(unknown, [f.encode_name for f in getattr(kind, "fields", ())])
    where = error.rpartition("`$.")[2].rstrip("`").split(".")
    for key in where:
        while isinstance(kind, msgspec.inspect.Metadata):
            kind = kind.type
        if not isinstance(kind, msgspec.inspect.StructType):
            return ""
        kind = next((f.type for f in kind.fields if f.encode_name == key), None)
    while isinstance(kind, msgspec.inspect.Metadata):
        kind = kind.type
    if isinstance(kind, msgspec.inspect.LiteralType):
        return f" (use one of: {', '.join(map(str, kind.values))})"
    return ""


_file: tuple[str | None, dict[str, Any]] = (None, {})
_cache: tuple[tuple[str | None, ...], Settings] | None = None


def configure(path: str | None) -> Settings:
    """Read the settings file at ``path`` (once; None: no file) and return the resulting settings."""
    global _file, _cache
    _file = (path, read_file(path) if path else {})
    _cache = None
    return settings()


def settings() -> Settings:
    """The current settings: the configured file (or ``$NOETHER_CONFIG``), with the environment over it."""
    global _cache
    if _file[0] is None and not _file[1] and os.environ.get("NOETHER_CONFIG"):
        configure(os.environ["NOETHER_CONFIG"])
    key = (_file[0], *(os.environ.get(name) for name in ENVIRONMENT))
    if _cache is None or _cache[0] != key:
        _cache = (key, build(_file[1], source=_file[0] or "environment"))
    return _cache[1]

"""The two settings a client of a live daemon reads — ``local`` and ``socket`` — without building the tree.

``settings.settings()`` checks the whole tree (msgspec Structs); importing
that costs a client more than the rest of its process. ``client_settings``
reads the same sources the same way (``$NOETHER_CONFIG``'s file, comments
dropped, then the ``NOETHER_*`` variables over it) and gives what
``settings()`` would give for these two, checking the file's keys against
the tree's (``KEYS``: its projection, a test holds the two equal). Anything
it cannot vouch for — a file it cannot read or parse, an unknown key, a
value of another type, or a process that has built the tree already — goes
to ``settings()``, so the answer or the error is the same. The other
settings' values are the daemon's to check; a client does not use them.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # no typing import on the CLI's entry (see errors.py)
if TYPE_CHECKING:
    from typing import Any

#: Environment variables and the setting each one sets (a path into the tree).
ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "NOETHER_HOME": ("home",),
    "NOETHER_SOCKET": ("socket",),
    "NOETHER_LOCAL": ("local",),
    "NOETHER_RUNTIME_SOURCE": ("nix", "runtime_source"),
    "NOETHER_NIXPKGS": ("nix", "nixpkgs"),
    "NOETHER_NIX_GCROOTS": ("nix", "gcroots"),
    "NOETHER_BUILD_CONCURRENCY": ("nix", "build_concurrency"),
    "NOETHER_ALLOW_UNPINNED_PIP": ("nix", "allow_unpinned_pip"),
    "NOETHER_SANDBOX_PROFILES": ("sandbox", "profiles_path"),
    "NOETHER_SANDBOX_WITHOUT_LIMITS": ("sandbox", "allow_without_limits"),
    "NOETHER_REGISTRY": ("registry", "url"),
    "NOETHER_API_KEY": ("registry", "api_key"),
    "NOETHER_REGISTRY_TIMEOUT_S": ("registry", "timeout_s"),
    "NOETHER_EXECUTOR": ("engine", "executor"),
    "NOETHER_REAPI": ("engine", "remote", "url"),
    "NOETHER_REAPI_INSTANCE": ("engine", "remote", "instance"),
}

#: Every section of ``settings.Settings`` (dotted; "" the top) → its keys.
KEYS: dict[str, frozenset[str]] = {section: frozenset(names.split()) for section, names in {
    "": "home socket local socket_mode allowed_uids allowed_gids allowed_groups write_uids max_body_bytes "
        "header_timeout_s max_connections max_runs max_queued_runs max_connections_per_peer max_runs_per_peer "
        "max_queued_runs_per_peer grace_s send_timeout_s allow_unsandboxed_runs log_level engine nix sandbox "
        "registry",
    "engine": "isolation sandbox_profile timeout_secs max_output_bytes max_stderr_bytes memory_bytes max_pids "
              "run_concurrency process_concurrency warm_sandboxes warm_idle_secs in_process_threads "
              "max_value_bytes max_stored_runs max_stored_runs_bytes max_stored_run_bytes pure_cache "
              "pure_cache_max_entries refinement_checks output_type_checks executor remote",
    "engine.remote": "url instance tls_ca tls_cert tls_key token_file profile queue_timeout_s reconnect_s",
    "nix": "runtime_source nixpkgs gcroots build_concurrency build_timeout_secs allow_unpinned_pip",
    "registry": "url api_key timeout_s",
    "sandbox": "allow_without_limits profiles_path",
}.items()}


def strip_comments(doc: Any) -> Any:
    """A configuration document without its comment keys (``//…`` and ``_…``), at any depth."""
    if isinstance(doc, dict):
        return {k: strip_comments(v) for k, v in doc.items()
                if not (isinstance(k, str) and (k.startswith("//") or k.startswith("_")))}
    return doc


def env_value(name: str, raw: str) -> Any:
    """A ``NOETHER_*`` variable's text as the value of its setting (before the tree checks it)."""
    if name == "NOETHER_SANDBOX_PROFILES":
        return [d for d in raw.split(":") if d]
    if name in ("NOETHER_LOCAL", "NOETHER_ALLOW_UNPINNED_PIP", "NOETHER_SANDBOX_WITHOUT_LIMITS"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def _known(doc: Any, section: str = "") -> bool:
    if not isinstance(doc, dict):
        return False
    keys = KEYS[section]
    for k, v in doc.items():
        if k not in keys:
            return False
        sub = f"{section}.{k}" if section else k
        if sub in KEYS and not _known(v, sub):
            return False
    return True


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".toml"):
            import tomllib

            doc = tomllib.loads(raw.decode())
        else:
            from noether_nix.jsontext import decode

            doc = decode(raw)
    except (OSError, ValueError):  # settings() says what is wrong
        return None
    if not isinstance(doc, dict):
        return None
    stripped: dict[str, Any] = strip_comments(doc)
    return stripped


def plain_client_settings(environ: Any) -> tuple[bool, str | None] | None:
    """``(local, socket)`` from the settings file ``environ`` names and the variables over it, read as plain
    data; None when that reading cannot vouch for what ``settings()`` would say."""
    path = environ.get("NOETHER_CONFIG")
    doc = _read(path) if path else {}
    if doc is None or not _known(doc):
        return None
    local, socket = doc.get("local", False), doc.get("socket")
    raw = environ.get("NOETHER_LOCAL")
    if raw:
        local = env_value("NOETHER_LOCAL", raw)
    socket = environ.get("NOETHER_SOCKET") or socket
    if isinstance(local, bool) and (socket is None or isinstance(socket, str)):
        return local, socket
    return None


def client_settings() -> tuple[bool, str | None]:
    """``(settings().local, settings().socket)``, reading only what these two need."""
    if "noether_nix.settings" not in sys.modules:  # else the tree is built already (a daemon, configure())
        plain = plain_client_settings(os.environ)
        if plain is not None:
            return plain
    from noether_nix.settings import settings

    s = settings()
    return s.local, s.socket


def default_socket() -> str:
    """The daemon's socket when none is named (settings ``socket``, ``$NOETHER_SOCKET``):
    per user, or the system one for root."""
    named = client_settings()[1]
    if named:
        return named
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.getuid() == 0 and not runtime:
        return "/run/noether/noether.sock"
    return os.path.join(runtime or "/tmp", "noether.sock")

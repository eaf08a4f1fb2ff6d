"""Errors as values users can act on, and the catalogue of their codes.

Every failure that reaches a user carries a stable machine ``code``, a
human sentence, and where it applies the offending ``path`` (JSON path,
file, node path or stage reference). Layers raise ``NoetherError``; the CLI
and the server turn it into the ACLI error envelope.

Each code is declared once, in ``CATALOGUE``, with the exit code the CLI
ends with (upstream's convention: 1 input and reference errors, 2 check and
policy failures, 3 execution failures) and the HTTP status the daemon
answers with. A test checks that every code raised anywhere is declared.
"""

from __future__ import annotations

# Every command imports this module: it stays free of ``typing`` (whose import
# costs about as much as starting the interpreter), as does the CLI's entry.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Code(tuple[int, int]):
    """A code's (exit code, HTTP status)."""

    __slots__ = ()

    def __new__(cls, exit_code: int, http_status: int) -> Code:
        return tuple.__new__(cls, (exit_code, http_status))

    @property
    def exit_code(self) -> int:
        return self[0]

    @property
    def http_status(self) -> int:
        return self[1]


_INPUT = Code(1, 400)  # a file, spec, graph or request that is malformed
_MISSING = Code(1, 404)  # a reference to nothing
_CONFLICT = Code(1, 409)
_POLICY = Code(2, 422)  # checked and refused before anything ran
_BAD_FLAG = Code(2, 400)  # a run option / command-line value that is not allowed
_EXECUTION = Code(3, 422)  # the graph ran and a stage failed
_HOST = Code(3, 503)  # this host cannot do it now (Nix, bwrap, a runtime)
_BUSY = Code(1, 503)
_QUOTA = Code(1, 429)

CATALOGUE: dict[str, Code] = {
    # requests, files and arguments
    "usage": _BAD_FLAG, "bad_request": _INPUT, "invalid_json": _INPUT, "body_too_large": Code(1, 413),
    "request_timeout": Code(1, 408), "method_not_allowed": Code(1, 405), "not_found": _MISSING,
    "file_not_found": _MISSING, "io_error": _INPUT, "write_failed": Code(1, 500),
    "invalid_config": _INPUT, "config_unreadable": _INPUT, "interrupted": Code(130, 500),
    # stages, specs, types and graphs
    "invalid_spec": _INPUT, "invalid_stage": _INPUT, "invalid_effect": _INPUT, "unknown_effect": _INPUT,
    "invalid_type": _INPUT, "invalid_property": _INPUT, "invalid_implementation": _INPUT,
    "missing_execute": _INPUT, "id_mismatch": _INPUT, "hash_mismatch": _INPUT, "invalid_graph": _INPUT,
    "graph_too_deep": _INPUT, "invalid_store_file": _INPUT, "import_failed": _INPUT,
    "invalid_requirement": _INPUT, "unpinned_requirement": _INPUT, "unsupported_language": _INPUT,
    "stage_code_invalid": Code(1, 422), "verification_failed": Code(1, 422), "stage_test_failed": Code(1, 422),
    "stage_not_found": _MISSING, "trace_not_found": _MISSING, "run_not_found": _MISSING,
    "pinning_needs_stage_id": _INPUT, "successor_missing": _MISSING, "deprecation_cycle": _CONFLICT,
    "ambiguous_reference": _CONFLICT, "invalid_transition": _CONFLICT, "daemon_running": _CONFLICT,
    "socket_path_taken": _CONFLICT,
    # the type checker and pre-flight
    "type_mismatch": _POLICY, "unification_failed": _POLICY, "empty_node": _POLICY,
    "config_type_mismatch": _POLICY, "branch_predicate_not_bool": _POLICY, "input_type_mismatch": _POLICY,
    "effect_not_allowed": _POLICY, "language_not_runnable": _POLICY, "capability_not_granted": _POLICY, "budget_exceeded": _POLICY,
    "isolation_required": _POLICY, "isolation_unavailable": _POLICY, "invalid_grant": _POLICY,
    "unknown_capability": _BAD_FLAG, "unknown_isolation": _BAD_FLAG, "invalid_budget": _BAD_FLAG,
    "invalid_limit": _BAD_FLAG, "invalid_policy": _BAD_FLAG, "invalid_policy_path": _BAD_FLAG,
    "policy_path_missing": _BAD_FLAG, "policy_too_large": _BAD_FLAG, "non_finite_number": _INPUT,
    "env_not_allowed": _BAD_FLAG, "invalid_env": _BAD_FLAG, "sandbox_users_missing": _POLICY,
    "limits_unavailable": _POLICY,
    "invalid_text": _INPUT,
    # running stages (a stage's own failure is exit 3 whatever its code: StageError)
    "stage_failed": _EXECUTION, "stage_input_mismatch": _EXECUTION, "stage_protocol_error": _EXECUTION,
    "stage_timed_out": _EXECUTION, "refinement_violation": _EXECUTION, "output_type_mismatch": _EXECUTION, "remote_output_mismatch": _EXECUTION,
    "retry_exhausted": _EXECUTION, "too_many_attempts": _EXECUTION, "all_failed": _EXECUTION,
    "nesting_too_deep": _EXECUTION, "path_not_granted": _EXECUTION, "path_not_found": _EXECUTION,
    "no_implementation": _EXECUTION, "no_llm_provider": _EXECUTION, "arrow_unavailable": _EXECUTION,
    "value_too_deep": _EXECUTION, "value_too_large": _EXECUTION, "cancelled": Code(3, 409),
    "sandbox_session_failed": _EXECUTION,
    # who may do what, and how much
    "forbidden": Code(1, 403), "busy": _BUSY, "too_many_runs": _QUOTA, "too_many_connections": _QUOTA,
    # this host: Nix, runtimes, the sandbox, the daemon
    "nix_build_failed": Code(1, 422), "nix_build_timeout": Code(1, 422), "nix_missing": _HOST,
    "nix_store_not_writable": _HOST, "nix_daemon_unreachable": _HOST, "nix_out_of_disk": _HOST,
    "nix_query_failed": _HOST, "nix_expression_missing": _HOST, "nixpkgs_unavailable": _HOST,
    "patchelf_missing": _HOST, "runtime_unavailable": _HOST, "runtime_broken": _HOST,
    "requirements_fetch_failed": _HOST, "invalid_runtime_source": Code(1, 500), "seccomp_unavailable": _HOST,
    "sandbox_uids_unavailable": _HOST, "sandbox_users_busy": _BUSY,
    "store_unavailable": Code(1, 503), "bad_author_key": Code(1, 500), "author_key_unavailable": Code(1, 500), "invalid_profile": Code(1, 500),
    "profile_not_found": Code(1, 500), "daemon_unreachable": Code(1, 502), "daemon_error": Code(3, 502),
    "daemon_required": _INPUT, "internal_error": Code(3, 500),
    "nix_store_unusable": _HOST,
    # the registry: its server, and the client that talks to one
    "bind_failed": Code(1, 500), "conflict": _CONFLICT, "embedding_failed": _HOST, "timeout": Code(1, 504),
    "unauthorized": Code(1, 401), "validation_failed": Code(1, 422), "already_exists": _CONFLICT,
    "registry_unreachable": Code(1, 502), "registry_unauthorized": Code(1, 401), "registry_rejected": Code(1, 422),
    "registry_not_found": _MISSING, "registry_bad_stage": Code(1, 502), "registry_error": Code(1, 502),
    "not_a_directory": _INPUT, "sync_failed": Code(1, 422),
    # noether service install / uninstall
    "units_missing": Code(1, 500), "service_install_failed": Code(1, 500), "not_installed": _MISSING,
    "invalid_manifest": Code(1, 500), "must_be_root": _INPUT,
    # EX_CONFIG: the host, not the daemon, needs fixing (the unit does not restart on it)
    "host_unusable": Code(78, 503),
    # remote execution (REAPI cluster, noether worker, the launcher)
    "invalid_reapi_url": _BAD_FLAG, "reapi_credentials_unreadable": _INPUT, "worker_config_unreadable": _INPUT,
    "invalid_worker_config": _INPUT, "worker_register_failed": _HOST, "remote_unavailable": _HOST,
    "remote_no_worker": _HOST, "remote_forbidden": Code(3, 403), "remote_error": _HOST,
    "remote_failed": _EXECUTION, "remote_timed_out": _EXECUTION, "remote_refused": _EXECUTION,
    "remote_operation_lost": _EXECUTION, "remote_bad_action": _INPUT, "remote_bad_result": _HOST,
}
#: Families of codes built from a status: ``signature_unsigned``, ``stage_timed_out``, …
PREFIXES: dict[str, Code] = {"signature_": _POLICY, "stage_": _EXECUTION}


def lookup(code: str) -> Code | None:
    found = CATALOGUE.get(code)
    if found is None:
        found = next((c for prefix, c in PREFIXES.items() if code.startswith(prefix)), None)
    return found


class NoetherError(Exception):
    """A user-facing error with a stable code.

    ``exit_code`` defaults to the code's entry in ``CATALOGUE``; a caller
    passes one only where the context decides (a stage's failure is 3).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        path: str | None = None,
        hint: str | None = None,
        exit_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path
        self.hint = hint
        if exit_code is None:
            known = lookup(code)
            exit_code = known.exit_code if known is not None else 1
        self.exit_code = exit_code
        self.details = details or {}

    def __str__(self) -> str:
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.path:
            out["path"] = self.path
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NoetherError:
        """The inverse of ``to_dict`` (plus an optional ``exit_code``), for errors that crossed a socket."""
        path = doc.get("path")
        message = str(doc.get("message", ""))
        if path and message.startswith(f"{path}: "):
            message = message[len(path) + 2:]
        exit_code = doc.get("exit_code")
        return cls(str(doc.get("code", "daemon_error")), message, path=path, hint=doc.get("hint"),
                   exit_code=exit_code if isinstance(exit_code, int) else None, details=doc.get("details"))


def interrupted(e: BaseException) -> bool:
    """Whether ``e`` is Ctrl-C: a KeyboardInterrupt, or a group (trio's nurseries) of one or more
    of them and the cancellations they caused, at any depth — nothing else."""
    if isinstance(e, KeyboardInterrupt):
        return True
    if not isinstance(e, BaseExceptionGroup) or e.subgroup(KeyboardInterrupt) is None:
        return False
    import sys

    trio = sys.modules.get("trio")  # not imported: nothing is a trio.Cancelled (and asking must not import it)
    stops: tuple[type[BaseException], ...] = (KeyboardInterrupt, trio.Cancelled) if trio else (KeyboardInterrupt,)
    return e.split(stops)[1] is None


def http_status(err: NoetherError) -> int:
    """The daemon's answer status for ``err`` (an undeclared code is the daemon's fault: 500)."""
    known = lookup(err.code)
    return known.http_status if known is not None else 500

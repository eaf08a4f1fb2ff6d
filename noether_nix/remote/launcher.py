"""The trusted noether launcher: the only program an Action's Command runs.

``noether launch --protocol 1`` in an input root (or ``launch()`` called by
``noether worker``) reads the stage call the Action carries, checks it
against what this worker grants, and runs it exactly as the daemon would on
its own host: the program built by Nix (here, from the program spec when
this host lacks it), walls derived from the effects by the sandbox layer,
the same limits, bwrap. It writes ``result.json``.

What a worker grants (``WorkerGrants``) is its operator's decision, never
the submitter's: the network, file paths, LLM capabilities, unsandboxed
runs (never, unless the operator says so). The policy the Action carries
must be the one its effects derive under this worker's profile; any
difference (another profile, a hand-made policy) is refused, so no client
can widen the walls by writing them itself.

Exit status: 0 the stage ran and succeeded (the only cacheable result), 1
it ran and failed, 2 it was refused or could not be built.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import stat
import sys
from pathlib import Path
from typing import Any

import msgspec

from noether_nix.engine.executor import LocalExecutor, StageCall, StageOutcome
from noether_nix.errors import NoetherError
from noether_nix.model.effects import FsRead, FsWrite
from noether_nix.nix.registry import ProgramRegistry
from noether_nix.paths import noether_home
from noether_nix.remote.action import (
    INPUT_FILES,
    RESULT_FILE,
    LaunchResult,
    ProgramSpec,
    SandboxSpec,
    canonical,
    capabilities,
    decode_spec,
    store_free_policy,
)
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import RunAs

WORKER_CONFIG_ENV = "NOETHER_WORKER_CONFIG"


class WorkerGrants(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What this worker lets a stage have (the operator's settings)."""

    profile: str = "default"
    network: bool = False
    #: Directories FsRead / FsWrite effects may bind (at or under).
    allow_read: list[str] = msgspec.field(default_factory=list)
    allow_write: list[str] = msgspec.field(default_factory=list)
    #: LLM providers this worker holds credentials for ("llm:<model>").
    capabilities: list[str] = msgspec.field(default_factory=list)
    #: Run actions that ask for ``isolation: none`` (off: they are refused).
    allow_unsandboxed: bool = False
    #: Host user the sandboxes run as (the launcher's own when unset).
    run_as_uid: int | None = None
    run_as_gid: int | None = None

    def run_as(self) -> RunAs | None:
        if self.run_as_uid is None:
            return None
        return RunAs(uid=self.run_as_uid, gid=self.run_as_gid if self.run_as_gid is not None else self.run_as_uid)


def load_grants(path: str | None) -> WorkerGrants:
    if not path:
        return WorkerGrants()
    try:
        return msgspec.json.decode(Path(path).read_bytes(), type=WorkerGrants)
    except OSError as e:
        raise NoetherError("worker_config_unreadable", f"cannot read {path}: {e.strerror}", path=path) from None
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise NoetherError("invalid_worker_config", f"invalid worker config: {e}", path=path) from None


def _under(path: str, roots: list[str]) -> bool:
    p = posixpath.normpath(path)
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in map(posixpath.normpath, roots))


def refusal(what: str) -> NoetherError:
    return NoetherError("remote_refused", f"this worker refuses the action: {what}", exit_code=3)


def program_key(program: ProgramSpec) -> str:
    """The id this worker builds and registers ``program`` under: a hash of
    what the build depends on (language and code), never the submitter's
    ``id``. A program registry keyed by the claimed id would let one
    submitter plant code that every later Action naming that id runs."""
    return hashlib.sha256(f"noether-remote-program\0{program.language}\0{program.code}".encode()).hexdigest()


def admit(program: ProgramSpec, input_bytes: bytes, spec: SandboxSpec, grants: WorkerGrants) -> StageCall:
    """The stage call, if this worker may run it as asked; else ``remote_refused``."""
    if spec.profile != grants.profile:
        raise refusal(f"it was encoded for sandbox profile {spec.profile!r}, this worker runs {grants.profile!r}")
    if spec.isolation != "bwrap" and not grants.allow_unsandboxed:
        raise refusal("it asks to run without the bwrap sandbox, which this worker never does")
    if spec.policy.network and not grants.network:
        raise refusal("it needs the network, which this worker does not grant")
    for e in spec.effects.effects:
        if isinstance(e, FsRead) and not _under(e.path, [*grants.allow_read, *grants.allow_write]):
            raise refusal(f"it reads {e.path}, which this worker does not grant (--allow-read)")
        if isinstance(e, FsWrite) and not _under(e.path, grants.allow_write):
            raise refusal(f"it writes {e.path}, which this worker does not grant (--allow-write)")
    missing = sorted(set(capabilities(spec.effects)) - set(grants.capabilities))
    if missing:
        raise refusal(f"it needs {', '.join(missing)}, which this worker does not hold")
    maxima = load_profile(grants.profile).maxima
    for name in spec.limits.__struct_fields__:
        value = getattr(spec.limits, name)
        if not value > 0:  # -1 would be RLIM_INFINITY for the rlimits; NaN compares false
            raise refusal(f"its limit {name}={value} is not positive")
        ceiling = maxima.get(name)
        if ceiling is not None and value > ceiling:
            raise refusal(f"its limit {name}={value} is above this worker's maximum {ceiling}")
    call = StageCall(program_id=program_key(program), language=program.language, code=program.code,
                     effects=spec.effects,
                     input=msgspec.json.decode(input_bytes), limits=spec.limits, isolation=spec.isolation,
                     label=f"stage {program.id[:16]}", run_as=grants.run_as(), env=spec.env, clear_env=spec.clear_env)
    derived = store_free_policy(call, grants.profile)
    if canonical(derived) != canonical(spec.policy):
        raise refusal("its sandbox policy is not the one its effects derive under this worker's profile")
    return call


async def run_local(call: StageCall, *, programs: Any, profile: str) -> StageOutcome:
    """Build and run on this host: the engine's own local executor."""
    return await LocalExecutor(programs, profile=profile).execute(call)


class LaunchError(msgspec.Struct):
    code: str
    message: str


class LaunchRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``result.json``: the outcome, or the error that stopped the launch."""

    result: LaunchResult | None = None
    error: LaunchError | None = None


async def launch(files: dict[str, bytes], *, programs: Any, grants: WorkerGrants) -> tuple[int, bytes]:
    """(exit status, result.json bytes) for one input root."""
    try:
        program, input_bytes, spec = decode_spec(files)
        call = admit(program, input_bytes, spec, grants)
        outcome = await run_local(call, programs=programs, profile=grants.profile)
    except NoetherError as e:
        return 2, msgspec.json.encode(LaunchRecord(error=LaunchError(e.code, e.message)))
    fields = {f: getattr(outcome, f) for f in LaunchResult.__struct_fields__}
    record = LaunchRecord(result=LaunchResult(**fields))
    return (0 if outcome.ok else 1), msgspec.json.encode(record)


def _read_regular(root: Path, name: str) -> bytes | None:
    """The bytes of the regular file ``name`` in ``root``, never through a symlink; None for anything else."""
    try:
        fd = os.open(root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


def write_result(root: Path, record: bytes) -> None:
    """``result.json`` as a new file of ours: whatever the input root had under
    that name (a symlink to a file of the runner's, say) is removed, never
    written through."""
    path = root / RESULT_FILE
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(record)


def main(argv: list[str]) -> int:
    """``noether launch --protocol 1``: run the stage call in the current directory."""
    import trio

    root = Path.cwd()
    files: dict[str, bytes] = {}
    for name in os.listdir(root):
        if name == RESULT_FILE:
            continue  # our output (a run before this one's): never read, replaced below
        data = _read_regular(root, name) if name in INPUT_FILES else None
        files[name] = b"" if data is None else data  # decode_spec names what does not belong
    grants = load_grants(os.environ.get(WORKER_CONFIG_ENV))
    home = noether_home()
    home.mkdir(parents=True, exist_ok=True)
    programs = ProgramRegistry(home / "noether.db")
    rc, record = trio.run(lambda: launch(files, programs=programs, grants=grants))
    try:
        write_result(root, record)
    except OSError as e:
        print(f"noether launch: cannot write {RESULT_FILE}: {e.strerror}", file=sys.stderr)
        return 2
    if rc == 2:
        print(msgspec.json.decode(record)["error"]["message"], file=sys.stderr)
    return rc

"""A stage call as an REAPI v2 Action: pure data, no I/O.

The Action is a function of the call alone (program, input, effects, the
policy they derive, limits), never of the host that encodes it: the daemon
and any other client encode the same bytes, so the Action digest is the
same cache key everywhere (tests/remote pins golden digests).

Input root (one flat directory, three files):

- ``program.json``  ``{"id", "language", "code"}``: enough for a worker to
  build the stage's program with Nix when it does not have it;
- ``input.json``    the input value, exactly the bytes the program reads on stdin;
- ``sandbox.json``  the effects, the sandbox policy they derive (without the
  program's store closure, which the runner adds for its own build), the
  limits, the isolation, the profile and the environment.

``Command.argv`` is the trusted launcher, ``noether launch --protocol 1``,
which writes ``result.json``. Platform properties say what a worker needs:
the runtime, the network, capabilities, the launcher protocol.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from noether_nix.engine.executor import StageCall
from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectKind, EffectSet, Llm
from noether_nix.model.jcs import serde_compact
from noether_nix.nix.runtime import normalise_language
from noether_nix.remote.protos import noether_reapi_pb2 as re
from noether_nix.sandbox.policy import IsolationPolicy, Limits, policy_from_effects
from noether_nix.sandbox.profile import load_profile

PROTOCOL = 1
LAUNCHER_ARGV: tuple[str, ...] = ("noether", "launch", "--protocol", str(PROTOCOL))
PROGRAM_FILE = "program.json"
INPUT_FILE = "input.json"
SANDBOX_FILE = "sandbox.json"
RESULT_FILE = "result.json"
INPUT_FILES = (INPUT_FILE, PROGRAM_FILE, SANDBOX_FILE)

# Platform property names (values are matched exactly by the scheduler).
P_OS = "OSFamily"
P_LAUNCHER = "noether-launcher"
P_RUNTIME = "noether-runtime"
P_NETWORK = "noether-network"
P_CAPABILITY = "noether-capability"
P_ISOLATION = "noether-isolation"
PLATFORM_KEYS = (P_OS, P_LAUNCHER, P_RUNTIME, P_NETWORK, P_CAPABILITY, P_ISOLATION)

# A blob is named by "hash/size", as in REAPI resource names.
BlobKey = str


class ProgramSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    language: str
    code: str


class SandboxSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    protocol: int
    effects: EffectSet
    policy: IsolationPolicy
    limits: Limits
    isolation: Literal["bwrap", "none"]
    profile: str
    env: dict[str, str] | None = None
    clear_env: bool = False


class LaunchResult(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``result.json``: what one launch produced (a StageOutcome's fields)."""

    status: str
    message: str
    isolation: str
    output: Any = None
    exit_code: int | None = None
    stderr_tail: str = ""
    wall_ms: int = 0
    cpu_ms: int | None = None
    max_rss_kb: int | None = None
    build_ms: int | None = None


def digest_of(data: bytes) -> re.Digest:
    return re.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def key_of(d: re.Digest) -> BlobKey:
    return f"{d.hash}/{d.size_bytes}"


def digest_from_key(k: BlobKey) -> re.Digest:
    h, _, size = k.partition("/")
    return re.Digest(hash=h, size_bytes=int(size))


def is_pure(effects: EffectSet) -> bool:
    """Pure (or Pure and Fallible): the same input always gives the same output,
    so its result may be memoised (the engine's own pure-cache rule)."""
    kinds = set(effects.kinds())
    return EffectKind.PURE in kinds and kinds <= {EffectKind.PURE, EffectKind.FALLIBLE}


def capabilities(effects: EffectSet) -> list[str]:
    """What a worker must hold besides the sandbox: LLM providers for now."""
    return sorted({f"llm:{e.model}" for e in effects.effects if isinstance(e, Llm)})


def platform_of(call: StageCall, policy: IsolationPolicy) -> list[tuple[str, str]]:
    props = [(P_OS, "linux"), (P_LAUNCHER, str(PROTOCOL)), (P_RUNTIME, normalise_language(call.language))]
    if policy.network:
        props.append((P_NETWORK, "allowed"))
    if call.isolation == "none":
        props.append((P_ISOLATION, "none"))
    props += [(P_CAPABILITY, c) for c in capabilities(call.effects)]
    return sorted(props)


def store_free_policy(call: StageCall, profile: str) -> IsolationPolicy:
    """The walls ``call``'s effects derive under ``profile``, without any store
    closure (each runner binds its own build of the program)."""
    policy = policy_from_effects(call.effects, profile=load_profile(profile), store_paths=[])
    if call.clear_env:
        policy = msgspec.structs.replace(policy, env_allowlist=[])
    return policy


def _duration(seconds: float) -> Any:
    from google.protobuf.duration_pb2 import Duration

    whole = math.floor(seconds)
    return Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def canonical(value: Any) -> bytes:
    return serde_compact(msgspec.to_builtins(value))


@dataclass
class EncodedAction:
    action: re.Action
    action_digest: re.Digest
    command: re.Command
    #: Every blob the Action needs, by key: the Action, the Command, the input
    #: root Directory and its files.
    blobs: dict[BlobKey, bytes] = field(default_factory=dict)
    cacheable: bool = False
    platform: list[tuple[str, str]] = field(default_factory=list)

    @property
    def key(self) -> BlobKey:
        return key_of(self.action_digest)


def encode_call(call: StageCall, *, profile: str = "default", salt: bytes = b"") -> EncodedAction:
    """The Action for ``call``; raises NoetherError when its policy is not
    one this host can derive (a bind of a missing path, …)."""
    policy = store_free_policy(call, profile)
    spec = SandboxSpec(protocol=PROTOCOL, effects=call.effects, policy=policy, limits=call.limits,
                       isolation=call.isolation, profile=profile, env=call.env, clear_env=call.clear_env)
    program = ProgramSpec(id=call.program_id, language=normalise_language(call.language), code=call.code)
    files = {
        INPUT_FILE: serde_compact(call.input),
        PROGRAM_FILE: canonical(program),
        SANDBOX_FILE: canonical(spec),
    }
    blobs: dict[BlobKey, bytes] = {}

    def put(data: bytes) -> re.Digest:
        d = digest_of(data)
        blobs[key_of(d)] = data
        return d

    root = re.Directory(files=[re.FileNode(name=n, digest=put(files[n])) for n in sorted(files)])
    platform = platform_of(call, policy)
    pb_platform = re.Platform(properties=[re.Platform.Property(name=n, value=v) for n, v in platform])
    command = re.Command(arguments=list(LAUNCHER_ARGV), output_paths=[RESULT_FILE], platform=pb_platform)
    cacheable = is_pure(call.effects)
    action = re.Action(command_digest=put(command.SerializeToString(deterministic=True)),
                       input_root_digest=put(root.SerializeToString(deterministic=True)),
                       timeout=_duration(call.limits.timeout_s), do_not_cache=not cacheable,
                       platform=pb_platform, salt=salt)
    action_digest = put(action.SerializeToString(deterministic=True))
    return EncodedAction(action=action, action_digest=action_digest, command=command, blobs=blobs,
                         cacheable=cacheable, platform=platform)


def action_digest(call: StageCall, *, profile: str = "default") -> str:
    """``hash/size`` of ``call``'s Action: its cache key on any REAPI cluster."""
    return encode_call(call, profile=profile).key


def decode_spec(files: dict[str, bytes]) -> tuple[ProgramSpec, bytes, SandboxSpec]:
    """The launcher's view of an input root; anything else is refused."""
    names = sorted(files)
    if names != sorted(INPUT_FILES):
        raise NoetherError("remote_bad_action", f"the input root must hold exactly {', '.join(INPUT_FILES)}; "
                           f"it holds {', '.join(names) or 'nothing'}")
    try:
        program = msgspec.json.decode(files[PROGRAM_FILE], type=ProgramSpec)
        spec = msgspec.json.decode(files[SANDBOX_FILE], type=SandboxSpec)
        msgspec.json.decode(files[INPUT_FILE])
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise NoetherError("remote_bad_action", f"the action's input root is not a noether stage call: {e}") from None
    if spec.protocol != PROTOCOL:
        raise NoetherError("remote_bad_action", f"launcher protocol {spec.protocol} is not {PROTOCOL}")
    return program, files[INPUT_FILE], spec

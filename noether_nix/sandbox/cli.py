"""``noether sandbox``: run any command under a policy (upstream's noether-sandbox).

Exit codes: the child's code, 128+signal, 127 when it cannot start, 2 for
usage / policy / isolation errors.
"""

from __future__ import annotations

import argparse
import sys

import msgspec
import trio

from noether_nix.errors import NoetherError
from noether_nix.model.effects import EffectSet
from noether_nix.sandbox.policy import IsolationPolicy, Limits, policy_from_effects, validate
from noether_nix.sandbox.profile import load_profile
from noether_nix.sandbox.supervisor import Isolation, Status, run_sandboxed


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sandbox", help="run a command under an isolation policy")
    p.add_argument("--policy-file", help="IsolationPolicy JSON (default: read from stdin; empty = Pure)")
    p.add_argument("--isolate", default="bwrap", help="bwrap (default) or none")
    p.add_argument("--profile", default="default")
    p.add_argument("--timeout-secs", type=float)
    p.add_argument("--max-output-bytes", type=int)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(handler=None, raw_handler=main_from_args, command="sandbox")


def _load_policy(args: argparse.Namespace) -> IsolationPolicy:
    profile = load_profile(args.profile)
    if args.policy_file:
        with open(args.policy_file, "rb") as f:
            raw = f.read()
    elif not sys.stdin.isatty():
        raw = sys.stdin.buffer.read(1024 * 1024 + 1)
        if len(raw) > 1024 * 1024:
            raise NoetherError("policy_too_large", "policy on stdin is larger than 1 MiB", exit_code=2)
    else:
        raw = b""
    if not raw.strip():
        return policy_from_effects(EffectSet.pure(), profile=profile)
    try:
        return validate(msgspec.json.decode(raw, type=IsolationPolicy))
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise NoetherError("invalid_policy", f"invalid policy: {e}", path=args.policy_file or "stdin",
                           exit_code=2) from None


def main_from_args(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise NoetherError("usage", "missing command: noether sandbox [options] -- CMD ARGS…", exit_code=2)
    policy = _load_policy(args)
    profile = load_profile(args.profile)
    limits = Limits.from_profile(profile)
    limits = limits.lowered(timeout_s=args.timeout_secs, max_output_bytes=args.max_output_bytes)
    result = trio.run(lambda: run_sandboxed(cmd, policy=policy, limits=limits, stdin=b"",
                                            isolation=Isolation.parse(args.isolate), expect_json=False,
                                            profile=profile))
    if result.stdout_bytes:
        sys.stdout.buffer.write(result.stdout_bytes)
        sys.stdout.flush()
    if result.stderr_tail:
        sys.stderr.write(result.stderr_tail)
    if result.status is Status.OK:
        return 0
    if result.status is Status.SPAWN_FAILED:
        print(f"noether sandbox: {result.message}", file=sys.stderr)
        return 127
    if result.status is Status.ERROR and result.exit_code is not None:
        return result.exit_code
    if result.signal is not None:
        return 128 + result.signal
    print(f"noether sandbox: {result.message}", file=sys.stderr)
    return 128 + 9

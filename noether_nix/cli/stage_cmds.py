"""``noether stage …``: add, get, list, lifecycle changes, verify.

Each command asks the live daemon, or computes the same data embedded
(``noether_nix.service.stages``).
"""

from __future__ import annotations

import argparse
from typing import Any

from noether_nix.cli import registry_cmds, remote
from noether_nix.cli.common import open_store, read_json_file
from noether_nix.cli.envelope import CommandResult
from noether_nix.model.stage import stage_from_spec, stage_to_json
from noether_nix.service import stages as svc
from noether_nix.store.signing import sign_for_store


def register(sub: Any) -> None:
    stage = sub.add_parser("stage", help="manage stages").add_subparsers(dest="stage_cmd", required=True)

    p = stage.add_parser("add", help="add a stage from a spec file")
    p.add_argument("spec")
    p.add_argument("--draft", action="store_true", help="keep it a Draft instead of activating it")
    p.add_argument("--no-build", action="store_true", help="do not build the stage's Nix program now")
    p.set_defaults(handler=cmd_add, command="stage add")

    p = stage.add_parser("get", help="show a stage")
    p.add_argument("ref")
    p.set_defaults(handler=cmd_get, command="stage get")

    p = stage.add_parser("list", help="list stages")
    p.add_argument("--lifecycle", default="active", choices=svc.LIST_LIFECYCLES)
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--full-ids", action="store_true")
    p.set_defaults(handler=cmd_list, command="stage list")

    for name, to in (("activate", "Active"), ("tombstone", "Tombstone")):
        p = stage.add_parser(name, help=f"move a stage to {to}")
        p.add_argument("ref")
        p.set_defaults(handler=cmd_transition, to=to, successor=None, command=f"stage {name}")
    p = stage.add_parser("deprecate", help="deprecate a stage in favour of a successor")
    p.add_argument("ref")
    p.add_argument("--successor", required=True)
    p.set_defaults(handler=cmd_transition, to="Deprecated", command="stage deprecate")

    p = stage.add_parser("verify", help="check hashes, signatures, examples and properties")
    p.add_argument("ref", nargs="?")
    p.set_defaults(handler=cmd_verify, command="stage verify")

    p = stage.add_parser("test", help="run stages on their own examples (all Active stages, or those REF names)")
    p.add_argument("ref", nargs="?")
    p.set_defaults(handler=cmd_test, command="stage test")

    registry_cmds.extend_stage_commands(stage)  # search, sync; list/get/add/lifecycle merge a registry


def cmd_add(args: argparse.Namespace) -> Any:
    # Parsed and signed here, with the user's author key, in both modes.
    stage = sign_for_store(stage_from_spec(read_json_file(args.spec, what="spec file"), path=args.spec))
    client = remote.daemon(timeout=None)  # may build a program
    if client is not None:
        return client.call("POST", "/v1/stages", {"spec": stage_to_json(stage), "draft": args.draft,
                                                  "build": not args.no_build})
    import trio

    store = open_store()
    return trio.run(lambda: svc.add_stage(store, stage, draft=args.draft, build=not args.no_build))


def cmd_get(args: argparse.Namespace) -> Any:
    client = remote.daemon()
    if client is not None:
        return client.call("GET", f"/v1/stages/{remote.seg(args.ref)}")
    return svc.get_stage(open_store(), args.ref)


def cmd_list(args: argparse.Namespace) -> Any:
    client = remote.daemon()
    if client is not None:
        from urllib.parse import urlencode

        query = urlencode([("lifecycle", args.lifecycle), *(("tag", t) for t in args.tag),
                           ("full_ids", "1" if args.full_ids else "0")])
        return client.call("GET", f"/v1/stages?{query}")
    return svc.list_stages(open_store(), lifecycle=args.lifecycle, tags=args.tag, full_ids=args.full_ids)


def cmd_transition(args: argparse.Namespace) -> Any:
    client = remote.daemon()
    if client is not None:
        return client.call("PATCH", f"/v1/stages/{remote.seg(args.ref)}/lifecycle",
                           {"lifecycle": args.to.lower(), "successor": args.successor})
    return svc.change_lifecycle(open_store(), args.ref, args.to, successor=args.successor)


def cmd_verify(args: argparse.Namespace) -> Any:
    client = remote.daemon()
    if client is not None:
        data = client.call("GET", f"/v1/stages/{remote.seg(args.ref)}/verify" if args.ref else "/v1/verify")
    else:
        data = svc.verify_stages(open_store(), args.ref)
    return CommandResult(data, svc.verification_error(data))


def cmd_test(args: argparse.Namespace) -> Any:
    from noether_nix.service import stage_test

    client = remote.daemon(timeout=None)  # runs every example, some in sandboxes
    if client is not None:
        data = client.call("POST", f"/v1/stages/{remote.seg(args.ref)}/test" if args.ref else "/v1/test")
    else:
        import trio

        from noether_nix.engine.engine import Engine

        engine = Engine(store=open_store())
        data = trio.run(stage_test.run_stage_tests, engine, args.ref)
    return CommandResult(data, stage_test.stage_test_error(data))

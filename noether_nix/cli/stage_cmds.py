"""``noether stage …``: add, get, list, lifecycle changes, verify, test."""

from __future__ import annotations

import argparse
from typing import Any

from noether_nix.cli import registry_cmds
from noether_nix.cli.common import CommandResult, backend, read_json_file
from noether_nix.service.endpoints import LIST_LIFECYCLES


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    stage = sub.add_parser("stage", help="manage stages", parents=[common]).add_subparsers(
        dest="stage_cmd", required=True, metavar="SUBCOMMAND")

    p = stage.add_parser("add", help="add a stage from a spec file", parents=[common])
    p.add_argument("spec")
    p.add_argument("--draft", action="store_true", help="keep it a Draft instead of activating it")
    p.add_argument("--no-build", action="store_true", help="do not build the stage's Nix program now")
    p.set_defaults(handler=cmd_add, command="stage add")

    p = stage.add_parser("get", help="show a stage", parents=[common])
    p.add_argument("ref")
    p.set_defaults(handler=cmd_get, command="stage get")

    p = stage.add_parser("list", help="list stages", parents=[common])
    p.add_argument("--lifecycle", default="active", choices=LIST_LIFECYCLES)
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--full-ids", action="store_true")
    p.set_defaults(handler=cmd_list, command="stage list")

    for name, to in (("activate", "active"), ("tombstone", "tombstone")):
        p = stage.add_parser(name, help=f"move a stage to {to.capitalize()}", parents=[common])
        p.add_argument("ref")
        p.set_defaults(handler=cmd_transition, to=to, successor=None, command=f"stage {name}")
    p = stage.add_parser("deprecate", help="deprecate a stage in favour of a successor", parents=[common])
    p.add_argument("ref")
    p.add_argument("--successor", required=True)
    p.set_defaults(handler=cmd_transition, to="deprecated", command="stage deprecate")

    p = stage.add_parser("verify", help="check hashes, signatures, examples and properties", parents=[common])
    p.add_argument("ref", nargs="?")
    p.set_defaults(handler=cmd_verify, command="stage verify")

    p = stage.add_parser("test", help="run stages on their own examples (all Active stages, or those REF names)",
                         parents=[common])
    p.add_argument("ref", nargs="?")
    p.set_defaults(handler=cmd_test, command="stage test")

    registry_cmds.extend_stage_commands(stage, common)  # search, sync; list/get/add/lifecycle merge a registry


def signed_stage_json(spec_path: str, doc: Any = None) -> dict[str, Any]:
    """A spec file parsed and signed here, with the user's author key, in both modes."""
    from noether_nix.model.stage import stage_from_spec, stage_to_json
    from noether_nix.store.signing import sign_for_store

    if doc is None:
        doc = read_json_file(spec_path, what="spec file")
    return stage_to_json(sign_for_store(stage_from_spec(doc, path=spec_path)))


def cmd_add(args: argparse.Namespace) -> Any:
    from noether_nix.model.stage import spec_lifecycle

    doc = read_json_file(args.spec, what="spec file")
    stage_json = signed_stage_json(args.spec, doc)
    # The file's own "lifecycle": "Draft" is honoured (--draft says the same).
    draft = args.draft or spec_lifecycle(doc, path=args.spec) == "Draft"
    view = getattr(args, "view", None)
    if view is None or args.no_build or not stage_json.get("implementation_code"):
        return backend(args).stage_add(stage_json, draft=draft, build=not args.no_build)
    with view.status(f"building the program of {stage_json.get('name') or stage_json['id'][:8]}…"):
        return backend(args).stage_add(stage_json, draft=draft, build=True)


def cmd_get(args: argparse.Namespace) -> Any:
    return backend(args).stage_get(args.ref)


def cmd_list(args: argparse.Namespace) -> Any:
    return backend(args).stage_list(lifecycle=args.lifecycle, tags=args.tag, full_ids=args.full_ids)


def cmd_transition(args: argparse.Namespace) -> Any:
    return backend(args).stage_lifecycle(args.ref, args.to, args.successor)


def cmd_verify(args: argparse.Namespace) -> Any:
    from noether_nix.service.stages import verification_error

    data = backend(args).stage_verify(args.ref)
    return CommandResult(data, verification_error(data))


def cmd_test(args: argparse.Namespace) -> Any:
    from noether_nix.service.stage_test import stage_test_error

    view = getattr(args, "view", None)
    if view is None:
        data = backend(args).stage_test(args.ref)
    else:
        with view.status("running the stages on their examples…"):
            data = backend(args).stage_test(args.ref)
    return CommandResult(data, stage_test_error(data))

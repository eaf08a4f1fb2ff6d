"""The registry in the CLI: ``noether registry serve``, ``--registry URL``, and the
stage commands that merge a registry with the local store.

``--registry URL`` (anywhere on the line) wins over ``$NOETHER_REGISTRY``.
With a registry configured:

- ``stage list`` / ``get`` / ``search`` show local and remote stages together;
  a local stage shadows a remote one with the same id; rows say their origin;
- graph resolution (``run``, ``check``, this process's daemon) falls back to
  the registry, verifying and caching what it fetches (``registry.client``);
- with ``$NOETHER_API_KEY`` set, ``stage add`` / ``sync`` / ``activate`` /
  ``deprecate`` / ``tombstone`` change the registry; without it they change
  the local store and say so.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from noether_nix.cli import common
from noether_nix.cli.common import CommandResult
from noether_nix.errors import NoetherError

Handler = Callable[[argparse.Namespace], Any]


# ---------------------------------------------------------------- configuration


def configure(flag_url: str | None) -> None:
    """Install the registry (``--registry URL``, else ``$NOETHER_REGISTRY``) as this
    process's remote stage source."""
    common.registry_flag = flag_url
    install_source()


def registry_url() -> str | None:
    from noether_nix.settings import settings

    return common.registry_flag or settings().registry.url


def client() -> Any:
    """A ``RegistryClient`` for the configured registry, or None."""
    url = registry_url()
    if not url:
        return None  # and the registry client (an HTTP library) stays unloaded
    from noether_nix.registry.client import client_from_env

    return client_from_env(url)


def install_source() -> None:
    from noether_nix.store.remote import set_remote_source

    c = client()
    if c is None:
        set_remote_source(None)
        return
    from noether_nix.registry.client import RegistrySource

    set_remote_source(RegistrySource(c))


# ---------------------------------------------------------------- registration


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """``noether registry serve``."""
    reg = sub.add_parser("registry", help="serve a stage registry", parents=[common]).add_subparsers(
        dest="registry_cmd", required=True, metavar="SUBCOMMAND")
    p = reg.add_parser("serve", help="serve the registry over HTTP (see docs/registry.md)", parents=[common])
    p.add_argument("--bind", help="HOST:PORT (default $NOETHER_BIND or 127.0.0.1:3000)")
    p.add_argument("--database-url", help="PostgreSQL URL (default $DATABASE_URL; SQLite when neither is set)")
    p.add_argument("--store-path", help="SQLite file (default $NOETHER_STORE_PATH or $NOETHER_HOME/registry.db)")
    p.add_argument("--stages-dir", help="load every *.json spec under it at start (default $NOETHER_STAGES_DIR)")
    p.add_argument("--allow-unsigned", action="store_true", help="let unsigned stages become Active")
    p.set_defaults(handler=None, raw_handler=cmd_serve, command="registry serve")


def extend_stage_commands(stage: Any, common: argparse.ArgumentParser) -> None:
    """Add ``stage search`` and ``stage sync``; make list/get/add/lifecycle registry-aware."""
    p = stage.add_parser("search", help="search stages by words or by type signature (local and registry)",
                         parents=[common])
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--lifecycle", default="active", choices=("draft", "active", "deprecated", "tombstone", "all"))
    p.set_defaults(handler=cmd_search, command="stage search")
    p = stage.add_parser("sync", help="add every *.json spec under DIR (to the registry when NOETHER_API_KEY is set)",
                         parents=[common])
    p.add_argument("directory")
    p.add_argument("--draft", action="store_true", help="keep new stages Drafts")
    p.set_defaults(handler=cmd_sync, command="stage sync")
    wrappers: dict[str, Callable[[Handler], Handler]] = {
        "list": _wrap_list, "get": _wrap_get, "add": _wrap_add,
        "activate": _wrap_transition, "deprecate": _wrap_transition, "tombstone": _wrap_transition,
    }
    for name, wrap in wrappers.items():
        parser = stage.choices[name]
        parser.set_defaults(handler=wrap(parser.get_default("handler")))


# ---------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from noether_nix.registry.config import config_from_env, parse_bind
    from noether_nix.registry.serve import run_registry

    config = config_from_env()
    if args.bind:
        parse_bind(args.bind)
        config.bind = args.bind
    if args.database_url:
        config.database_url = args.database_url
    if args.store_path:
        config.store_path = args.store_path
    if args.stages_dir:
        if not Path(args.stages_dir).is_dir():
            raise NoetherError("invalid_config", "--stages-dir is not a directory", path=args.stages_dir)
        config.stages_dir = args.stages_dir
    if args.allow_unsigned:
        config.allow_unsigned_active = True
    return run_registry(config)


# ---------------------------------------------------------------- reading


def _row(stage: Any, origin: str, full_ids: bool = True) -> dict[str, Any]:
    from noether_nix.service.stages import stage_row

    return {**stage_row(stage, full_ids=full_ids), "origin": origin}


def _wrap_list(inner: Handler) -> Handler:
    def handler(args: argparse.Namespace) -> Any:
        reg = client()
        if reg is None:
            return inner(args)
        full_ids = args.full_ids
        args.full_ids = True
        local = inner(args)
        rows = [dict(r, origin="local") for r in local["stages"]]
        seen = {r["id"] for r in rows}
        error, remote, shadowed = None, [], 0
        try:
            remote = reg.list_stages(args.lifecycle, args.tag[0] if args.tag else None)
        except NoetherError as e:
            error = e
        for s in remote:
            if s.id in seen:
                shadowed += 1
            elif all(t in s.tags for t in args.tag):
                rows.append(_row(s, reg.url))
        rows.sort(key=lambda r: (r["description"], r["id"]))
        if not full_ids:
            rows = [dict(r, id=r["id"][:8]) for r in rows]
        data = {"stages": rows, "count": len(rows),
                "registry": {"url": reg.url, "stages": len(remote), "shadowed": shadowed,
                             "reachable": error is None or error.code != "registry_unreachable"}}
        return CommandResult(data, error) if error else data

    return handler


def _wrap_get(inner: Handler) -> Handler:
    def handler(args: argparse.Namespace) -> Any:
        reg = client()
        if reg is None:
            return inner(args)
        try:
            return inner(args)
        except NoetherError as e:
            if e.code != "stage_not_found":
                raise
        from noether_nix.model.stage import stage_to_json
        from noether_nix.registry.client import RegistryCache

        cache = RegistryCache(reg.url)
        try:
            stage = reg.get_stage(args.ref)
        except NoetherError as e:
            if e.code != "registry_unreachable" or not cache.answers(args.ref):
                raise
            stage = cache.store.resolve(args.ref)
            return {**stage_to_json(stage), "origin": reg.url, "cached": True}
        if stage is None:
            raise NoetherError("stage_not_found", f"no stage matches {args.ref!r} locally or in the registry at "
                               f"{reg.url}", path=args.ref)
        cache.remember(stage)
        return {**stage_to_json(stage), "origin": reg.url}

    return handler


def _local_stages(args: argparse.Namespace) -> list[Any]:
    from noether_nix.cli.common import backend
    from noether_nix.model.stage import stage_from_json

    return [stage_from_json(s) for s in backend(args).store_export()["stages"]]


def cmd_search(args: argparse.Namespace) -> Any:
    from noether_nix.registry.backend import memory_index

    if not args.query.strip():
        raise NoetherError("usage", "give words or a type signature to search for", path="query", exit_code=2)
    if not 1 <= args.limit <= 200:
        raise NoetherError("usage", "--limit must be from 1 to 200", path="--limit", exit_code=2)
    index = memory_index(_local_stages(args))
    local = index.search(args.query, lifecycle=args.lifecycle, limit=args.limit)
    reg = client()
    if reg is None:
        return {**local, "results": [dict(r, origin="local") for r in local["results"]]}
    error: NoetherError | None = None
    remote: dict[str, Any] = {"results": []}
    try:
        remote = reg.request("GET", "/stages/search", query={"q": args.query, "limit": args.limit,
                                                              "lifecycle": args.lifecycle})
    except NoetherError as e:
        error = e
    theirs = [dict(r, origin=reg.url) for r in remote.get("results", [])
              if isinstance(r, dict) and isinstance(r.get("id"), str)]
    results = merge_ranked([dict(r, origin="local") for r in local["results"]], theirs)
    data = {"query": args.query, "results": results[:args.limit], "count": min(len(results), args.limit),
            "registry": {"url": reg.url, "mode": remote.get("mode")}}
    return CommandResult(data, error) if error else data


def merge_ranked(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge two ranked result lists, keeping each one's order where they share stages
    (the registry ranks stages the local store lacks against the ones it has), by
    score otherwise; a local row shadows the remote row with the same id."""
    pos_mine = {r["id"]: i for i, r in enumerate(mine)}
    pos_theirs = {r["id"]: i for i, r in enumerate(theirs)}
    out: list[dict[str, Any]] = []
    done: set[str] = set()
    i = j = 0
    while True:
        while i < len(mine) and mine[i]["id"] in done:
            i += 1
        while j < len(theirs) and theirs[j]["id"] in done:
            j += 1
        a = mine[i] if i < len(mine) else None
        b = theirs[j] if j < len(theirs) else None
        if a is None and b is None:
            return out
        if a is None or b is None:
            pick = a or b
        elif a["id"] == b["id"] or pos_mine.get(b["id"], -1) > i:
            pick = a  # the same stage, or ours ranks it above their head
        elif pos_theirs.get(a["id"], -1) > j:
            pick = b  # they rank their head above ours
        else:
            pick = a if float(a.get("score", 0)) >= float(b.get("score", 0)) else b
        assert pick is not None
        row = mine[pos_mine[pick["id"]]] if pick["id"] in pos_mine else pick
        out.append(row)
        done.add(pick["id"])


# ---------------------------------------------------------------- writing


def _local_note(data: Any, reg: Any) -> Any:
    note = (f"NOETHER_API_KEY is not set: the local store changed, the registry at {reg.url} did not")
    if isinstance(data, dict):
        return {**data, "registry": {"url": reg.url, "changed": False, "note": note}}
    return data


def _signed_stage(path: str) -> Any:
    from noether_nix.cli.common import read_json_file
    from noether_nix.model.stage import stage_from_spec
    from noether_nix.store.signing import sign_for_store

    return sign_for_store(stage_from_spec(read_json_file(path, what="spec file"), path=path))


def _publish(reg: Any, stage: Any, draft: bool) -> dict[str, Any]:
    from noether_nix.model.stage import stage_to_json

    res = reg.publish(stage_to_json(stage), draft=draft)
    out = {"id": res.get("id", stage.id), "lifecycle": res.get("lifecycle"), "is_new": res.get("is_new"),
           "registry": reg.url}
    for key in ("supersedes", "warnings"):
        if res.get(key):
            out[key] = res[key]
    return out


def _wrap_add(inner: Handler) -> Handler:
    def handler(args: argparse.Namespace) -> Any:
        reg = client()
        if reg is None:
            return inner(args)
        if not reg.api_key:
            return _local_note(inner(args), reg)
        return _publish(reg, _signed_stage(args.spec), args.draft)

    return handler


def _wrap_transition(inner: Handler) -> Handler:
    def handler(args: argparse.Namespace) -> Any:
        reg = client()
        if reg is None:
            return inner(args)
        if not reg.api_key:
            return _local_note(inner(args), reg)
        stage = _remote_stage(reg, args.ref)
        successor = _remote_stage(reg, args.successor).id if args.successor else None
        res = reg.change_lifecycle(stage.id, args.to, successor)
        return {**res, "registry": reg.url} if isinstance(res, dict) else res

    return handler


def _remote_stage(reg: Any, ref: str) -> Any:
    stage = reg.get_stage(ref)
    if stage is None:
        raise NoetherError("stage_not_found", f"no stage matches {ref!r} in the registry at {reg.url}", path=ref)
    return stage


def cmd_sync(args: argparse.Namespace) -> Any:
    """Add every ``*.json`` spec under DIR: idempotent, reported per file."""
    directory = Path(args.directory)
    if not directory.is_dir():
        raise NoetherError("not_a_directory", "not a directory", path=args.directory)
    reg = client()
    writer = reg if reg is not None and reg.api_key else None
    add_local = None if writer else _local_adder(args, args.draft)
    added: list[dict[str, Any]] = []
    present: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for path in sorted(directory.rglob("*.json")):
        where = str(path)
        try:
            stage = _signed_stage(where)
            if writer is not None:
                res = _publish(writer, stage, args.draft)
                is_new, lifecycle = bool(res["is_new"]), res["lifecycle"]
            else:
                assert add_local is not None
                res = add_local(stage)
                is_new, lifecycle = "note" not in res, res["lifecycle"]
        except NoetherError as e:
            if e.code in ("registry_unreachable", "registry_unauthorized"):
                raise  # every other file would fail the same way
            failed.append({"file": where, "error": e.to_dict()})
            continue
        (added if is_new else present).append({"file": where, "id": stage.id, "lifecycle": lifecycle})
    data: dict[str, Any] = {
        "directory": args.directory,
        "target": writer.url if writer else "local",
        "added": added, "already_present": present, "failed": failed,
        "counts": {"added": len(added), "already_present": len(present), "failed": len(failed)},
    }
    if reg is not None and writer is None:
        data = _local_note(data, reg)
    if failed:
        return CommandResult(data, NoetherError("sync_failed", f"{len(failed)} of "
                                                f"{len(added) + len(present) + len(failed)} file(s) failed",
                                                path=args.directory))
    return data


def _local_adder(args: argparse.Namespace, draft: bool) -> Callable[[Any], dict[str, Any]]:
    from noether_nix.cli.common import backend
    from noether_nix.model.stage import stage_to_json

    return lambda stage: dict(backend(args).stage_add(stage_to_json(stage), draft=draft, build=False))

"""``noether registry serve``: open the store, load what it should hold, serve HTTP.

hypercorn serves the ASGI app on trio (see docs/registry.md for the choice);
SIGTERM / SIGINT stop it gracefully.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog
import trio

from noether_nix.errors import NoetherError
from noether_nix.model.stage import stage_from_spec
from noether_nix.registry.app import RegistryApp
from noether_nix.registry.backend import Backend, PostgresBackend, SqliteBackend
from noether_nix.registry.compose import CompositionRunner, DatabaseSource
from noether_nix.registry.config import RegistryConfig
from noether_nix.server import systemd
from noether_nix.store.remote import set_remote_source
from noether_nix.store.stages import StageStore
from noether_nix.store.stdlib_seed import stdlib_stages

log = structlog.get_logger("noether.registry")


def build_backend(config: RegistryConfig) -> Backend:
    embeddings = None
    if config.embeddings is not None:
        from noether_nix.registry.embeddings import EmbeddingProvider

        embeddings = EmbeddingProvider(config.embeddings)
    if config.database_url:
        return PostgresBackend(config.database_url, allow_unsigned_active=config.allow_unsigned_active,
                               embeddings=embeddings)
    return SqliteBackend(Path(config.store_path), allow_unsigned_active=config.allow_unsigned_active,
                         embeddings=embeddings)


def reader_store(config: RegistryConfig) -> Any:
    """A second connection to the registry's stage table (for runs' resolution)."""
    if config.database_url:
        from noether_nix.registry.pg import PgConnection

        return StageStore(conn=PgConnection(config.database_url))  # type: ignore[arg-type]
    return StageStore(Path(config.store_path))


def load_stages_dir(backend: Backend, directory: str) -> dict[str, Any]:
    """Every ``*.json`` spec under ``directory``, through the same add path as POST /stages."""
    import msgspec


    added, present, failed = 0, 0, []
    for path in sorted(Path(directory).rglob("*.json")):
        try:
            try:
                doc = msgspec.json.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError) as e:
                raise NoetherError("invalid_json", f"cannot read the spec file: {e}", path=str(path)) from None
            stage = stage_from_spec(doc, path=str(path))
            result = backend.add(stage)
        except NoetherError as e:
            failed.append({"file": str(path), "error": e.to_dict()})
            log.warning("stage_file_failed", file=str(path), code=e.code, error=str(e))
            continue
        if result.is_new:
            added += 1
        else:
            present += 1
        for w in result.warnings:
            log.warning("stage_warning", file=str(path), id=result.id, warning=w)
    return {"added": added, "already_present": present, "failed": len(failed)}


def prepare(backend: Backend, config: RegistryConfig) -> None:
    """Seed the stdlib, load the stages directory, index what is not: idempotent, so
    every replica does it at start."""
    if config.seed_stdlib:
        added = backend.seed(stdlib_stages())
        log.info("stdlib_seeded", added=added)
    if config.stages_dir:
        log.info("stages_dir_loaded", directory=config.stages_dir, **load_stages_dir(backend, config.stages_dir))
    reindexed = backend.reconcile()
    if reindexed:
        log.info("stages_reindexed", count=reindexed)


async def _embed_in_background(app: Any) -> None:
    try:
        n = await app.embed_missing()
        log.info("embeddings_ready", embedded=n)
    except NoetherError as e:
        log.warning("embeddings_failed", error=str(e))


def configure_logging() -> None:
    structlog.configure(processors=[structlog.processors.TimeStamper(fmt="iso"),
                                    structlog.processors.add_log_level, structlog.processors.format_exc_info,
                                    structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


async def serve(config: RegistryConfig, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve as hypercorn_serve

    from noether_nix.registry.pg import redact

    backend = await trio.to_thread.run_sync(build_backend, config)
    try:
        await trio.to_thread.run_sync(prepare, backend, config)
        runner = None
        if config.max_concurrent_runs > 0:
            # This process's runs resolve from the registry's own database.
            set_remote_source(DatabaseSource(reader_store(config), origin="registry database"))
            runner = CompositionRunner(Path(config.work_home))
        app = RegistryApp(config, backend, runner=runner)
        host, port = config.host_port
        hc = HypercornConfig()
        hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        hc.keep_alive_timeout = config.keep_alive_timeout_s
        hc.read_timeout = int(config.read_timeout_s) or 1
        hc.graceful_timeout = 10.0
        hc.h11_max_incomplete_size = 16 * 1024
        hc.include_server_header = False
        hc.accesslog = None  # the app logs one structured line per request
        hc.errorlog = "-"
        hc.loglevel = "WARNING"  # hypercorn's own lines are plain text: only its warnings and errors
        if config.api_key == "":
            log.warning("auth_disabled", message="NOETHER_API_KEY is empty: ANYONE who can reach this registry "
                        "can publish, change and delete stages and run compositions")
        elif config.api_key is None:
            log.info("writes_disabled", message="NOETHER_API_KEY is not set: the registry is read-only")

        async def until_signalled() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("registry_stopping", signal=signal.Signals(signum).name)
                    systemd.notify("STOPPING=1")
                    return

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: hypercorn_serve(
                app, hc, shutdown_trigger=until_signalled, task_status=task_status))  # type: ignore[arg-type]
            if backend.embeddings is not None:
                nursery.start_soon(_embed_in_background, app)
            where = redact(config.database_url) if config.database_url else config.store_path
            log.info("registry_ready", urls=binds, url=binds[0] if binds else None, pid=os.getpid(),
                     backend=backend.kind, store=where, auth="disabled" if config.api_key == "" else
                     "read-only" if config.api_key is None else "key",
                     search="hybrid" if backend.embeddings else "lexical")
            systemd.notify("READY=1\nSTATUS=serving")
            task_status.started(binds)
    finally:
        set_remote_source(None)
        backend.close()


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def run_registry(config: RegistryConfig) -> int:
    configure_logging()
    try:
        trio.run(serve, config)
    except BaseExceptionGroup as group:
        # Failures inside the server's nursery arrive grouped: say the one that matters.
        leaves = _leaves(group)
        for leaf in leaves:
            if isinstance(leaf, NoetherError):
                raise leaf from None
        for leaf in leaves:
            if isinstance(leaf, OSError):
                raise NoetherError("bind_failed", f"cannot listen there: {leaf.strerror or leaf}",
                                   path=config.bind, hint="choose another --bind / NOETHER_BIND") from None
        raise
    return 0

"""One logging set-up for the CLI and the daemon: structured JSON lines on stderr.

Standard output belongs to the command's envelope (or, for the daemon, to
nothing), so no log line may ever reach it. Modules take their logger from
``get_logger``, which configures structlog on first use; the daemon calls
``setup`` itself to choose its level.
"""

from __future__ import annotations

import sys
from typing import Any

_configured = False


def setup(level: str = "info") -> None:
    """Log JSON lines to stderr at ``level`` and above (idempotent; the last call wins)."""
    global _configured
    import logging

    import structlog

    structlog.configure(
        processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.add_log_level,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


class _Logger:
    """A module's logger: structlog (and what it imports: logging, asyncio, …) is
    loaded when the first line is logged, not when the module is — most runs
    log nothing, and a one-shot command should not pay for it."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if not _configured:
            setup()
        import structlog

        return getattr(structlog.get_logger(self._name), attr)


def get_logger(name: str) -> Any:
    return _Logger(name)

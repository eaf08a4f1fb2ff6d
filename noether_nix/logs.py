"""One logging set-up for the CLI and the daemon: structured JSON lines on stderr.

Standard output belongs to the command's envelope (or, for the daemon, to
nothing), so no log line may ever reach it. Modules take their logger from
``get_logger``; structlog is loaded and configured when the first line is
logged (most one-shot commands log nothing); the daemon calls ``setup``
itself to choose its level.
"""

from __future__ import annotations

import sys
from typing import Any

from noether_nix.terminal import visible

_configured = False


def _import_structlog() -> Any:
    """structlog, imported without rich: structlog loads rich (and pygments) whenever it is
    installed, for pretty tracebacks these JSON lines never use. rich is the terminal view's
    library (``cli.human``); a command that prints JSON must not pay for loading it."""
    if "structlog" in sys.modules:
        return sys.modules["structlog"]
    blocked = "rich" not in sys.modules
    if blocked:
        sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog as module
    finally:
        if blocked and sys.modules.get("rich", False) is None:
            del sys.modules["rich"]
    return module


def setup(level: str = "info", *, human: bool = False) -> None:
    """Log JSON lines to stderr at ``level`` and above (idempotent; the last call wins);
    ``human``: one readable line each instead (the CLI's view on a terminal)."""
    global _configured
    import logging

    structlog = _import_structlog()
    render: Any = _human_line if human else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.add_log_level,
                    structlog.processors.format_exc_info, render],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False,
    )
    _configured = True


def _human_line(_logger: Any, _name: str, event: dict[str, Any]) -> str:
    """``noether: warning: imported 2 stages from …`` (its message), or the event's name and fields."""
    level = event.pop("level", "info")
    name = str(event.pop("event", ""))
    event.pop("timestamp", None)
    message = event.pop("message", None)
    if message is None:
        fields = ", ".join(f"{k}={v}" for k, v in event.items())
        message = name.replace("_", " ") + (f" ({fields})" if fields else "")
    # On a terminal: what a log line quotes (a stage's name, a path, an error) is shown, never obeyed.
    return visible(f"noether: {level}: {message}")


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (not when logging was set up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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
        return getattr(_import_structlog().get_logger(self._name), attr)


def get_logger(name: str) -> Any:
    return _Logger(name)

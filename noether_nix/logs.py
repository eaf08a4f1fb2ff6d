"""One logging set-up for the CLI and the daemon: structured JSON lines on stderr.

Standard output belongs to the command's envelope (or, for the daemon, to
nothing), so no log line may ever reach it. Modules take their logger from
``get_logger``, which configures structlog on first use; the daemon calls
``setup`` itself to choose its level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from noether_nix.terminal import visible


def _import_structlog() -> Any:
    """structlog, imported without rich: structlog loads rich (and pygments) whenever it is
    installed, for pretty tracebacks these JSON lines never use. rich is the terminal view's
    library (``cli.human``); a command that prints JSON must not pay for loading it."""
    blocked = "rich" not in sys.modules
    if blocked:
        sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog as module
    finally:
        if blocked and sys.modules.get("rich", False) is None:
            del sys.modules["rich"]
    return module


structlog = _import_structlog()
_configured = False


def setup(level: str = "info", *, human: bool = False) -> None:
    """Log JSON lines to stderr at ``level`` and above (idempotent; the last call wins);
    ``human``: one readable line each instead (the CLI's view on a terminal)."""
    global _configured
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


def get_logger(name: str) -> Any:
    if not _configured:
        setup()
    return structlog.get_logger(name)

"""Errors as values users can act on.

Every failure that reaches a user carries a stable machine ``code``, a
human sentence, and where it applies the offending ``path`` (JSON path,
file, node path or stage reference). Layers raise ``NoetherError``; the CLI
and the server turn it into the ACLI error envelope.
"""

from __future__ import annotations

from typing import Any


class NoetherError(Exception):
    """A user-facing error with a stable code.

    ``exit_code`` follows upstream's CLI convention: 1 for input and
    reference errors, 2 for check / policy failures, 3 for execution
    failures.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        path: str | None = None,
        hint: str | None = None,
        exit_code: int = 1,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.path = path
        self.hint = hint
        self.exit_code = exit_code
        self.details = details or {}

    def __str__(self) -> str:
        if self.path:
            return f"{self.path}: {self.message}"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.path:
            out["path"] = self.path
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NoetherError:
        """The inverse of ``to_dict`` (plus an optional ``exit_code``), for errors that crossed a socket."""
        path = doc.get("path")
        message = str(doc.get("message", ""))
        if path and message.startswith(f"{path}: "):
            message = message[len(path) + 2:]
        exit_code = doc.get("exit_code")
        return cls(str(doc.get("code", "daemon_error")), message, path=path, hint=doc.get("hint"),
                   exit_code=exit_code if isinstance(exit_code, int) else 1, details=doc.get("details"))

"""Errors a user can cause. Each carries the HTTP status the API answers with and a sentence saying what
to change; the CLI prints the same sentence and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    status = 400

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        body = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return body


class NotFound(UserError):
    status = 404


class Forbidden(UserError):
    status = 403


class Conflict(UserError):
    status = 409


class QuotaExceeded(UserError):
    status = 429


class ServiceUnavailable(UserError):
    status = 503


def pydantic_message(exc) -> tuple[str, str | None]:
    """One readable sentence (and the offending field) from a pydantic ValidationError."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    msg = first.get("msg", "is invalid").removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"'{loc}' is required.", loc or None
    if first.get("type") == "extra_forbidden":
        return f"'{loc}' is not a known field; remove it.", loc or None
    if loc:
        return f"'{loc}': {msg}.", loc
    return f"{msg}.", None

"""The one error type of nids: a status code and a message the caller may read.

Every failure the service reports on purpose is an `NIDSError` subclass (as MLServer's `MLServerError`):
the HTTP layer maps it in one place (nids.serving.errors) to `{"error": message, "detail": [...]}` with its
status code, 5xx included, so the caller of a 503 reads its cause. The stream worker and scripts use the
same classes without any web framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, ClassVar


class NIDSError(Exception):
    """Base of every reported failure; `message` is public (never a secret or an input value)."""

    status_code: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, detail: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.detail: tuple[dict[str, Any], ...] = tuple(detail)

    def body(self) -> dict[str, Any]:
        """The JSON body the caller receives."""
        body: dict[str, Any] = {"error": self.message}
        if self.detail:
            body["detail"] = list(self.detail)
        return body


class InvalidInput(NIDSError):
    """The request breaks a rule; `detail` names each location (loc), rule (type) and message (msg)."""

    status_code = HTTPStatus.BAD_REQUEST

    @classmethod
    def fields(cls, detail: Sequence[dict[str, Any]]) -> InvalidInput:
        """A refusal listing every invalid field, with the count as its message."""
        return cls(f"{len(detail)} invalid field(s) in the request", detail=detail)


class NotFound(NIDSError):
    status_code = HTTPStatus.NOT_FOUND


class Conflict(NIDSError):
    """The request contradicts the current state (e.g. reverting an action that already ended)."""

    status_code = HTTPStatus.CONFLICT


class RequestTooLarge(NIDSError):
    """A request over a row or byte limit; the message names the setting."""

    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(NIDSError):
    """A body in a media type the API does not read (e.g. an Arrow table sent to an API of JSON objects)."""

    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class Unavailable(NIDSError):
    """A dependency the request needs is down (no verified models, the audit store unreachable)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE


class ModelsUnavailable(Unavailable):
    """No verified models are active; the message says why."""


class TooManyRequests(NIDSError):
    """A caller's budget is used up (e.g. events per minute of a caller not authorised to enforce)."""

    status_code = HTTPStatus.TOO_MANY_REQUESTS

"""Every error the service reports, as HTTP, in one place.

An `NIDSError` answers `{"error": message, "detail": [...]}` with the error's own status (5xx included: the
caller of a 503 reads its cause), and a refused request body (pydantic) answers 400 with each location, rule
and message. Refusals are logged at INFO without the payload; ERROR stays for the server's own faults. The
BentoML APIs reach `refusal` through nids.serving.compat.endpoint (a patch of BentoML's endpoint), the mounted
FastAPI apps through `install_fastapi`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nids.core.errors import InvalidInput, NIDSError

logger = logging.getLogger("nids.serving")


def error_response(error: NIDSError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == HTTPStatus.UNAUTHORIZED else None
    return JSONResponse(error.body(), status_code=int(error.status_code), headers=headers)


def refusal(request: Request, refused: NIDSError) -> JSONResponse:
    """The response of a refused request, logged at INFO (WARNING for 5xx) without its payload."""
    level = logging.WARNING if refused.status_code >= 500 else logging.INFO
    logger.log(level, "%s %s: %d %s", request.method, request.url.path, refused.status_code, refused.message)
    return error_response(refused)


# --- the mounted FastAPI apps (nids.serving.routes) answer errors the same way -------------------------------
def install_fastapi(app: FastAPI) -> None:
    """NIDSError -> its status and body; a refused request (missing field, bad query) -> 400 naming each."""

    async def nids_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, NIDSError)
        return refusal(request, error)

    async def invalid_request(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        detail = [{key: item[key] for key in ("loc", "msg", "type") if key in item} for item in error.errors()]
        return await nids_error(request, InvalidInput.fields(detail))

    async def http_error(request: Request, error: Exception) -> Response:  # unknown path, method not allowed
        assert isinstance(error, StarletteHTTPException)
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    app.add_exception_handler(NIDSError, nids_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)

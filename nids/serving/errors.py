"""Every error the service reports, as HTTP, in one place.

BentoML 1.4.39 answers any exception of an API with its own body and replaces the message of every 5xx with
a generic one, and it logs each client error at ERROR with a traceback. `install()` wraps its endpoint so that
an `NIDSError` answers `{"error": message, "detail": [...]}` with the error's own status (5xx included: the
caller of a 503 reads its cause), and a refused request body (pydantic) answers 400 with each location, rule
and message. Refusals are logged at INFO without the payload; ERROR stays for the server's own faults.
Like nids.serving.bentoml_fixes, the patch applies to the pinned version only.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import bentoml
from _bentoml_impl.server.app import ServiceAppFactory
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nids.core.errors import InvalidInput, NIDSError
from nids.core.validation import invalid_fields
from nids.serving.bentoml_fixes import PATCHED_VERSION

logger = logging.getLogger("nids.serving")
_api_endpoint = ServiceAppFactory.api_endpoint


def error_response(error: NIDSError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == HTTPStatus.UNAUTHORIZED else None
    return JSONResponse(error.body(), status_code=int(error.status_code), headers=headers)


async def _endpoint(self: ServiceAppFactory, name: str, request: Request) -> Response:
    try:
        return await _api_endpoint(self, name, request)
    except ValidationError as error:
        refused: NIDSError = invalid_fields(error)
    except NIDSError as error:
        refused = error
    except StarletteHTTPException as error:  # starlette's refusal of an unreadable body (multipart without a boundary)
        if error.status_code >= 500:
            raise
        refused = InvalidInput(f"the request body cannot be read as {_media_type(request)}: {error.detail}")
    return refusal(request, refused)


def refusal(request: Request, refused: NIDSError) -> JSONResponse:
    """The response of a refused request, logged at INFO (WARNING for 5xx) without its payload."""
    level = logging.WARNING if refused.status_code >= 500 else logging.INFO
    logger.log(level, "%s %s: %d %s", request.method, request.url.path, refused.status_code, refused.message)
    return error_response(refused)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip()


def install() -> bool:
    """Map errors on the pinned BentoML version; True when the mapping is in place."""
    if bentoml.__version__ != PATCHED_VERSION:
        logger.warning("bentoml %s is not %s: errors keep BentoML's own bodies", bentoml.__version__, PATCHED_VERSION)
        return False
    ServiceAppFactory.api_endpoint = _endpoint  # type: ignore[method-assign]
    return True


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

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

import bentoml
from _bentoml_impl.server.app import ServiceAppFactory
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nids.core.errors import InvalidInput, NIDSError
from nids.core.validation import invalid_fields
from nids.serving.bentoml_fixes import PATCHED_VERSION

logger = logging.getLogger("nids.serving")
_api_endpoint = ServiceAppFactory.api_endpoint


def error_response(error: NIDSError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=int(error.status_code))


async def _endpoint(self: ServiceAppFactory, name: str, request: Request) -> Response:
    try:
        return await _api_endpoint(self, name, request)
    except ValidationError as error:
        refused: NIDSError = invalid_fields(error)
    except NIDSError as error:
        refused = error
    except HTTPException as error:  # starlette's refusal of an unreadable body (e.g. multipart without a boundary)
        if error.status_code >= 500:
            raise
        refused = InvalidInput(f"the request body cannot be read as {_media_type(request)}: {error.detail}")
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

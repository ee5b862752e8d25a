"""The service's errors as HTTP, through BentoML 1.4.39's API endpoint.

BentoML answers any exception of an API with its own body: every 5xx message is replaced by "An unexpected error
has occurred" (a 503's cause is lost to the caller), a 4xx body is `[{"error": ...}]`, and each client error is
logged at ERROR with a traceback. `install()` wraps `ServiceAppFactory.api_endpoint` so that an `NIDSError`
answers `{"error": message, "detail": [...]}` with the error's own status, and a refused request body (pydantic)
answers 400 with each location, rule and message (nids.serving.errors), logged at INFO without the payload.

Upstream: bentoml/BentoML#3652 (custom exceptions shown as 500; answered: subclass BentoMLException, whose 5xx
messages are still replaced). Fallback: BentoML's own error bodies (statuses kept for BentoMLException only).
"""

from __future__ import annotations

from _bentoml_impl.server.app import ServiceAppFactory
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from nids.core.errors import InvalidInput, NIDSError
from nids.core.validation import invalid_fields
from nids.serving.compat import applies
from nids.serving.errors import refusal

_api_endpoint = ServiceAppFactory.api_endpoint
UPSTREAM = (
    (_api_endpoint, "e7721288fa866de6ef5072f159bf1b76e5876a9aaf4b4c135df7c5bbd5fcf8f8"),
    # the wrapper around it, which answers what escapes: its 5xx masking is what this works around
    (ServiceAppFactory.api_endpoint_wrapper, "18842e99e6086c0fafcf845358ec610d74eb17fdde1e9fefc65c87c4009f36ce"),
)


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


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip()


def install() -> bool:
    """Map errors on the pinned BentoML version; True when the mapping is in place."""
    if ServiceAppFactory.api_endpoint is _endpoint:
        return True
    if not applies("the error mapping", "errors keep BentoML's own bodies", *UPSTREAM):
        return False
    ServiceAppFactory.api_endpoint = _endpoint  # type: ignore[method-assign]
    return True

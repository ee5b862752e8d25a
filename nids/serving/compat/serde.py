"""How BentoML 1.4.39 reads request bodies, patched to the rules of nids.serving.parsing, and the columnar media
types of nids.serving.columnar registered.

- JSON: BentoML hands the raw body to pydantic, which keeps the last of duplicate keys (`{"src_bytes": 1,
  "src_bytes": -5}` silently means -5): `JSONSerde.deserialize_model` decodes with nids.serving.parsing.decode
  (a repeated key is a 400 naming it). A JSON object or list sent as application/x-www-form-urlencoded (curl's
  `-d` without a content type) is read as JSON.
- Files: BentoML accepts a *string* where an API takes a file and downloads it when it looks like an http(s) URL
  (bentoml/BentoML#4411, "allow url as file input"), in a multipart form and as a whole JSON body: server-side
  request forgery. Both are a 400 naming the field, before anything is fetched.
- Columnar bodies: BentoML picks a serde by Content-Type from `ALL_SERDE` (read in `ServiceAppFactory.api_endpoint`,
  whose source nids.serving.compat.endpoint checks); the Arrow and Parquet types are added to it.

Fallbacks: the body guards fail closed: on any other version or source, the service refuses to start
(RuntimeError), since BentoML would fetch a URL sent as a file field. The columnar types are not registered
(those bodies are read as JSON and refused with 400) and a warning says so.
"""

from __future__ import annotations

from typing import Any

from _bentoml_impl.serde import ALL_SERDE, JSONSerde, MultipartSerde, Payload
from _bentoml_sdk.io_models import IORootModel
from starlette.datastructures import UploadFile
from starlette.requests import Request

from nids.core.errors import InvalidInput
from nids.core.tables import FORMATS
from nids.serving.columnar import ColumnarSerde
from nids.serving.compat import PATCHED_VERSION, applies
from nids.serving.compat.endpoint import UPSTREAM as ENDPOINT
from nids.serving.parsing import decode, not_an_upload

_multipart_parse = MultipartSerde.parse_request
_json_parse = JSONSerde.parse_request
UPSTREAM = (
    (MultipartSerde.parse_request, "65de1b4c289aac56e271dc5011c9c0627bdb7fa124b1ac8fd1b7003cf58163ed"),
    (JSONSerde.parse_request, "3ea0d77b4084d1be4683ece1d3486384ee9b92af2333b97031bd00793877ef57"),
    (JSONSerde.deserialize_model, "e2e0b56831e5da0c64e2e5da1ced8dfb467eee0ec65394f01e094dbd6d218738"),
)


def _deserialize_json(self: JSONSerde, payload: Payload, cls: Any) -> Any:
    data = decode(b"".join(payload.data) or b"{}")
    if not isinstance(data, dict) and not issubclass(cls, IORootModel):  # pydantic would name the IO class
        detail = [{"loc": [], "msg": "Input should be an object", "type": "model_type"}]
        raise InvalidInput.fields(detail)
    return cls.model_validate(data)


async def _parse_multipart(self: MultipartSerde, request: Request, cls: Any) -> Any:
    if _is_json_as_form(request) and (await request.body()).lstrip()[:1] in (b"{", b"["):
        return await _parse_json(JSONSerde(), request, cls)  # `curl -d '{...}'`: JSON under curl's default type
    form = await request.form()  # starlette keeps the parsed form: BentoML's own parse reads it again
    for field in cls.multipart_fields:
        if any(not isinstance(value, UploadFile) for value in form.getlist(field)):
            raise not_an_upload(field)
    return await _multipart_parse(self, request, cls)


def _is_json_as_form(request: Request) -> bool:
    """A body sent as application/x-www-form-urlencoded (curl's type for `-d` without `-H content-type`)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


async def _parse_json(self: JSONSerde, request: Request, cls: Any) -> Any:
    if issubclass(cls, IORootModel) and cls.multipart_fields:  # a bare URL body would be downloaded
        raise not_an_upload(cls.multipart_fields[0])
    return await _json_parse(self, request, cls)


def install() -> None:
    """Patch the body parsing of the pinned BentoML version; RuntimeError (the service does not start) where the
    guard cannot apply."""
    if JSONSerde.deserialize_model is _deserialize_json:
        return
    fallback = "the service does not start"
    if not applies("the guard against file fields sent as URLs (fetched by BentoML: SSRF)", fallback, *UPSTREAM):
        raise RuntimeError(
            "the guard against file fields sent as URLs (fetched by BentoML: SSRF) cannot be applied to this "
            f"BentoML (see the warning above), so the service does not start; install bentoml=={PATCHED_VERSION}"
        )
    MultipartSerde.parse_request = _parse_multipart  # type: ignore[method-assign]
    JSONSerde.parse_request = _parse_json  # type: ignore[method-assign]
    JSONSerde.deserialize_model = _deserialize_json  # type: ignore[method-assign]


def install_columnar() -> bool:
    """Register the columnar media types on the pinned BentoML version; True when they are."""
    # the endpoint whose source ENDPOINT checks is what reads ALL_SERDE
    if not applies("Arrow and Parquet bodies", "they are not read (400)", ENDPOINT[0]):
        return False
    for media_type in FORMATS:
        ALL_SERDE[media_type] = ColumnarSerde  # type: ignore[index]
    return True

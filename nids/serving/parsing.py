"""How request bodies are read: JSON without duplicate keys, file fields only as uploads (BentoML 1.4.39).

JSON: BentoML hands the raw body to pydantic, which keeps the last of duplicate keys (`{"src_bytes": 1,
"src_bytes": -5}` silently means -5). `install()` decodes it itself, refusing any object with a repeated key
(400 naming the key), and validates the decoded value: the same rules and messages. `decode` tries orjson
first (2-3x faster than the standard library on flow bodies) and proves the absence of repeated keys by counting
them (`_keys_counted`); any body it cannot prove, orjson refuses (NaN, Infinity, invalid JSON) or would read
differently (an integer of 19 or more digits, which orjson turns into a float past 64 bits), is decoded by the
standard library exactly as before. Integers keep their exact value, so
`10**400` is refused by the float32 rule rather than read as infinity. A JSON object or list sent as
application/x-www-form-urlencoded (what `curl -d` sends without `-H 'content-type: application/json'`) is read as
JSON: as a form it was one field named by the whole body, and the API answered "flows: Field required".

Files: BentoML's request parsing accepts a *string* where an API takes a file (`analyze_csv`'s `file`) and downloads
it when it looks like an http(s) URL: in a multipart form (`-F file=http://...`) and as a whole JSON body. A
serving stack must not fetch what a caller points it at (server-side request forgery), nor read a path it
names: both are a 400 naming the field, before anything is fetched. Unreadable multipart bodies (no boundary, a
part without a name) are mapped to 400 in nids.serving.errors. The patches of BentoML's serdes that apply these
rules live in nids.serving.compat.serde; this module holds the rules.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import orjson

from nids.core.errors import InvalidInput

RULE = "file_upload"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        repeated = next(key for key, n in Counter(key for key, _ in pairs).items() if n > 1)
        message = f"the key {repeated!r} appears twice in one JSON object: each key may appear once"
        raise InvalidInput(message, detail=[{"loc": [repeated], "msg": message, "type": "json_duplicate_key"}])
    return obj


def decode(body: bytes) -> Any:
    """The JSON value of a request body; InvalidInput for invalid JSON or a key repeated within an object."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _NOT_DECODED
    if data is not _NOT_DECODED and _read_alike(body, data):
        return data
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        message = f"Invalid JSON: {error}"
        raise InvalidInput.fields([{"loc": [], "msg": message, "type": "json_invalid"}]) from None


_NOT_DECODED = object()


def _read_alike(body: bytes, data: Any) -> bool:
    """True when `data` is the standard library's value of `body` (no integer orjson widens to a float), with
    every key of the body kept (none repeated)."""
    return _LONG_DIGITS not in body.translate(_DIGITS) and _keys_counted(body, data)


_DIGITS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))  # every digit -> "0", else " "
_LONG_DIGITS = b"0" * 19  # 19 digits reach 2**63: orjson reads longer integers as floats


def _keys_counted(body: bytes, data: Any) -> bool:
    """True when `data` (decoded from `body`) provably kept every key of the body, i.e. none was repeated.

    Without a backslash in the body every `"` delimits a string, and with no whitespace between a closing quote and
    a colon every key of the body ends in `":`, so the body holds at most body.count(b'":') keys. The keys kept
    are at least those counted here (the top level and the objects of top-level lists). Equal counts leave no room
    for a repeated key; anything else (escapes, spaced colons, deeper objects, a value starting with `:`) returns
    False and is decoded by the standard library.
    """
    if b"\\" in body:
        return False
    keys_at_most = body.count(b'":')
    if body.count(b":") != keys_at_most and _SPACED_COLON.search(body):  # only colons after quotes: none spaced
        return False
    kept = 0
    if type(data) is dict:
        kept = len(data)
        for value in data.values():
            if type(value) is list:
                kept += sum(len(item) for item in value if type(item) is dict)
    return kept == keys_at_most


_SPACED_COLON = re.compile(rb'"[ \t\r\n]+:')


def not_an_upload(field: str) -> InvalidInput:
    message = f"'{field}' must be an uploaded file (a multipart/form-data file part); a URL or a path is never fetched"
    return InvalidInput.fields([{"loc": [field], "msg": message, "type": RULE}])

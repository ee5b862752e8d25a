"""Request bodies decode as the standard library decodes them, and a repeated key is refused on every path.

`decode` takes orjson's value only when it can prove no key was dropped; these tests compare it with the
standard library (with the duplicate-key hook) on written bodies and on generated ones, serialised in the
layouts clients use (compact, Python's default, indented, spaced colons, escapes).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nids.core.errors import InvalidInput
from nids.serving.parsing import _unique_keys, decode

pytestmark = pytest.mark.filterwarnings("ignore:.*__get_pydantic_core_schema__:DeprecationWarning")  # BentoML's


def stdlib(body: bytes) -> Any:
    return json.loads(body, object_pairs_hook=_unique_keys)


def assert_like_stdlib(body: bytes) -> None:
    try:
        expected = stdlib(body)
    except InvalidInput as error:  # a repeated key
        with pytest.raises(InvalidInput) as refused:
            decode(body)
        assert refused.value.detail == error.detail
        return
    except ValueError as error:
        with pytest.raises(InvalidInput) as refused:
            decode(body)
        assert refused.value.detail[0] == {"loc": [], "msg": f"Invalid JSON: {error}", "type": "json_invalid"}
        return
    got = decode(body)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize(
    "body",
    [
        b'{"flows": [{"src_bytes": 1, "src_bytes": -5}]}',
        b'{"flows": [{"src_bytes": 1, "src_bytes" : -5}]}',  # a space before the colon
        b'{"flows": [{"src_bytes": 1,\n "src_bytes"\t:-5}]}',
        b'{"flows": [{"a": {"b": 1, "b": 2}}]}',  # deeper than the counted levels
        b'{"flows": [], "flows": []}',
        b'{"flows": [{"flow_id": "x\\":", "a": 1, "a": 2}]}',  # an escaped quote before a colon
        b'{"flows": [{"flow_id": "\\u00e9", "a": 1}]}',
        b'{"flows": [{"flow_id": ":", "a": 1}]}',  # a value starting with a colon
        b'{"flows": [{"timestamp": "2017-07-07 10:00:00", "dst_ip": "2001:db8::1"}]}',
        b'{"flows": [{"src_bytes": NaN, "dst_bytes": Infinity, "count": -Infinity}]}',
        b'{"flows": [{"src_bytes": 1e400, "count": 100000000000000000000000000000000000000000}]}',
        b'{"flows": [{"service": -9223372036854775809, "timestamp": 18446744073709551616}]}',  # orjson: floats
        b'\xef\xbb\xbf{"flows": []}',  # a byte-order mark
        b'{"flows": [1, 2,]}',
        b"{}",
        b"[]",
        b'"flows"',
        b"\xff\xfe",
    ],
)
def test_written_bodies(body: bytes) -> None:
    assert_like_stdlib(body)


def test_a_repeated_key_is_named() -> None:
    with pytest.raises(InvalidInput) as refused:
        decode(b'{"flows": [{"count": 1, "count": 2}]}')
    assert refused.value.detail[0]["loc"] == ["count"] and refused.value.detail[0]["type"] == "json_duplicate_key"


KEYS = st.sampled_from(["flows", "src_bytes", " Flow Bytes/s", "a", "a:", ":", "", "é", 'q"'])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.sampled_from(KEYS.elements)
)


def _objects(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    pairs = st.lists(st.tuples(KEYS, children), max_size=4)  # may repeat a key
    return st.one_of(st.lists(children, max_size=4), pairs.map(lambda items: ("object", items)))


VALUES = st.recursive(SCALARS, _objects, max_leaves=12)


def _write(value: Any, item: str, key: str, indent: int | None) -> str:
    """JSON text of `value`, where ("object", pairs) keeps repeated keys."""
    if isinstance(value, tuple):
        inner = item.join(json.dumps(k) + key + _write(v, item, key, indent) for k, v in value[1])
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + item.join(_write(v, item, key, indent) for v in value) + "]"
    return json.dumps(value, indent=indent)


@settings(max_examples=500, deadline=None)
@given(
    value=VALUES.map(lambda v: ("object", [("flows", v)])),
    layout=st.sampled_from([(",", ":"), (", ", ": "), (",\n  ", " : "), (",", "\t:")]),
)
def test_generated_bodies(value: Any, layout: tuple[str, str]) -> None:
    item, key = layout
    assert_like_stdlib(_write(value, item, key, None).encode())


def test_numbers_keep_their_value() -> None:
    assert decode(b'{"x": [10000000000000000000000]}') == {"x": [10**22]}
    assert decode(b'{"x": -9223372036854775809}') == {"x": -(2**63) - 1}
    assert math.copysign(1, decode(b'{"x": -0.0}')["x"]) == -1

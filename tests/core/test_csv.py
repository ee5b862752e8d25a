"""CSV uploads (pipeline.read_csv): what real exports contain is read, what is ambiguous is a 400 naming `file`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nids.core.errors import InvalidInput
from nids.core.pipeline import read_csv
from training.data import CIC_ORIGINAL

LIMITS = {"max_rows": 100, "max_bytes": 1_000_000}


def real_lines(rows: int) -> list[str]:
    """The header and the first rows of the committed CIC-IDS2017 sample, as exported (label included)."""
    frame = pd.read_csv(CIC_ORIGINAL, nrows=rows, dtype=str, keep_default_na=False)
    return [",".join(frame.columns), *(",".join(row) for row in frame.itertuples(index=False))]


def upload(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "flows.csv"
    path.write_bytes(data)
    return path


def refusal(tmp_path: Path, data: bytes) -> dict[str, object]:
    with pytest.raises(InvalidInput) as caught:
        read_csv(upload(tmp_path, data), **LIMITS)
    assert caught.value.status_code == 400
    (error,) = caught.value.detail[:1]
    assert error["loc"][0] == "file"
    return error


@pytest.mark.parametrize(("prefix", "newline"), [(b"", b"\n"), (b"\xef\xbb\xbf", b"\n"), (b"", b"\r\n")])
def test_bom_and_crlf_are_read_as_usual(tmp_path: Path, prefix: bytes, newline: bytes) -> None:
    flows, ignored = read_csv(upload(tmp_path, prefix + newline.join(s.encode() for s in real_lines(3))), **LIMITS)
    assert len(flows) == 3 and " Label" in ignored


@pytest.mark.parametrize("data", [b"", b"\n", b"\xef\xbb\xbf"])
def test_an_empty_file_is_refused(tmp_path: Path, data: bytes) -> None:
    assert refusal(tmp_path, data)["type"] == "csv_empty"


def test_a_header_without_rows_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path, real_lines(0)[0].encode() + b"\n")["type"] == "csv_empty"


def test_duplicate_columns_are_refused(tmp_path: Path) -> None:
    header, *rows = real_lines(2)
    first = header.split(",")[0]
    error = refusal(tmp_path, "\n".join([f"{header},{first}", *(f"{row},1" for row in rows)]).encode())
    assert error["type"] == "csv_header" and first in str(error["msg"])


def test_a_row_with_an_extra_cell_is_refused(tmp_path: Path) -> None:
    header, first, second = real_lines(2)
    error = refusal(tmp_path, "\n".join([header, first, second + ",extra"]).encode())
    assert error["type"] == "csv_row_length" and "row 1" in str(error["msg"])


def test_a_quoted_newline_inside_a_number_is_a_bad_cell(tmp_path: Path) -> None:
    header, first = real_lines(1)
    cells = first.split(",")
    cells[1] = f'"{cells[1]}\n7"'  # Flow Duration
    error = refusal(tmp_path, "\n".join([header, ",".join(cells)]).encode())
    assert error["loc"] == ["file", 0, "attack", " Flow Duration"] and error["type"] == "float_parsing"


def test_a_value_overflowing_float32_is_refused(tmp_path: Path) -> None:
    header, first = real_lines(1)
    cells = first.split(",")
    cells[1] = "1e39"
    error = refusal(tmp_path, "\n".join([header, ",".join(cells)]).encode())
    assert error["loc"] == ["file", 0, "attack", " Flow Duration"] and error["type"] == "float32_range"


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"a,b\n\x00\x01,\x02\n"])
def test_binary_data_is_refused(tmp_path: Path, data: bytes) -> None:
    assert refusal(tmp_path, data)["type"] in {"csv_format", "csv_empty", "unknown_flow"}


@pytest.mark.parametrize("dropped", [["Flow Duration"], ["Flow Duration", "Fwd Packet Length Max"]])
def test_a_missing_column_is_named_once_not_per_row(tmp_path: Path, dropped: list[str]) -> None:
    frame = pd.read_csv(CIC_ORIGINAL, nrows=50, dtype=str, keep_default_na=False)
    missing = [column for column in frame.columns if column.strip() in dropped]
    frame = frame.drop(columns=missing)
    data = "\n".join([",".join(frame.columns), *(",".join(row) for row in frame.itertuples(index=False))])
    with pytest.raises(InvalidInput) as caught:
        read_csv(upload(tmp_path, data.encode()), **LIMITS)
    (error,) = caught.value.detail
    assert (error["loc"], error["type"]) == (["file"], "csv_missing_columns")
    assert error["msg"] == f"the CSV file has no column {missing}: every row needs these features"

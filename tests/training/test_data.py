"""Loaders on the committed real files, and their refusal of malformed files (built from real rows)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, THREAT_FEATURES
from training.data import (
    ATTACK_TYPE,
    CIC_IMPROVED,
    CIC_ORIGINAL,
    LABEL,
    NSL_KDD_TEST,
    NSL_KDD_TRAIN,
    SOURCE,
    DataValidationError,
    deduplicate_and_split,
    load_cic_improved,
    load_cic_original,
    load_nsl_kdd,
    sha256_file,
)


def real_rows(path: Path, n: int) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False, nrows=n)


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


# --- the committed files ---------------------------------------------------------------------------------


def test_nsl_kdd_files_load_with_recorded_hashes_and_counts():
    train = load_nsl_kdd(NSL_KDD_TRAIN)
    test = load_nsl_kdd(NSL_KDD_TEST)
    # counts and hashes from data/nsl-kdd/SOURCE.md
    assert train.sha256 == "a6af69dab42b229db8b687bdaeb8c295d2117ea1cfa442cbc40f470cbfba2a1b"
    assert train.frame[LABEL].value_counts().to_dict() == {0: 67343, 1: 58630}
    assert test.frame[LABEL].value_counts().to_dict() == {0: 9711, 1: 12833}
    assert list(train.frame.columns) == [*THREAT_FEATURES, LABEL, ATTACK_TYPE]
    assert train.frame[ATTACK_TYPE].nunique() == 23 and (train.frame[ATTACK_TYPE] == "normal").sum() == 67343
    assert pd.api.types.is_string_dtype(train.frame["service"]) and train.frame["src_bytes"].dtype == np.float64


def test_cic_improved_maps_names_and_labels_and_drops_heartbleed():
    dataset = load_cic_improved(CIC_IMPROVED)
    assert dataset.sha256 == sha256_file(CIC_IMPROVED)
    assert dataset.rows_read == 39393
    assert dataset.dropped == {"attempted": 0, "excluded_label": 8, "nan": 0}  # the 8 Heartbleed rows
    counts = dataset.frame[LABEL].map(dict(enumerate(ATTACK_CLASSES))).value_counts()
    assert counts["PortScan"] == 10000  # Portscan + Infiltration - Portscan
    assert counts["Bot"] == 515 and counts["Web Attack – Sql Injection"] == 9
    assert set(dataset.frame[SOURCE]) == {"corrected"}
    assert list(dataset.frame.columns[:42]) == list(ATTACK_FEATURES)


def test_cic_original_turns_infinity_into_zero():
    dataset = load_cic_original(CIC_ORIGINAL)
    assert dataset.rows_read == 44953 and dataset.dropped == {"excluded_label": 0, "nan": 0}
    values = dataset.frame[list(ATTACK_FEATURES)].to_numpy()
    assert np.isfinite(values).all()
    assert set(dataset.frame[LABEL]) == {0, 4, 7, 9, 10, 11, 12, 13}


def test_split_removes_duplicates_and_keeps_validation_out_of_training():
    frame = load_nsl_kdd(NSL_KDD_TRAIN, nrows=3000).frame
    doubled = pd.concat([frame, frame.iloc[:100]], ignore_index=True)
    split = deduplicate_and_split(doubled, THREAT_FEATURES, strata=[LABEL], validation_fraction=0.25, seed=1)
    assert split.duplicates_removed >= 100
    key = [*THREAT_FEATURES, LABEL]
    overlap = split.train[key].merge(split.validation[key], how="inner")
    assert overlap.empty
    assert abs(split.validation[LABEL].mean() - split.train[LABEL].mean()) < 0.02  # stratified
    again = deduplicate_and_split(doubled, THREAT_FEATURES, strata=[LABEL], validation_fraction=0.25, seed=1)
    pd.testing.assert_frame_equal(split.validation, again.validation)  # seeded


# --- malformed files -------------------------------------------------------------------------------------


def test_missing_column_is_named(tmp_path):
    path = write(real_rows(NSL_KDD_TRAIN, 5).drop(columns=["flag"]), tmp_path / "kdd.csv")
    with pytest.raises(DataValidationError, match=r"kdd\.csv: column 'flag': required column is missing"):
        load_nsl_kdd(path)


def test_non_numeric_value_names_file_column_and_row(tmp_path):
    rows = real_rows(NSL_KDD_TRAIN, 5)
    rows.loc[2, "src_bytes"] = "12kB"
    path = write(rows, tmp_path / "kdd.csv")
    with pytest.raises(DataValidationError) as error:
        load_nsl_kdd(path)
    assert str(error.value) == f"{path}: column 'src_bytes': must be numeric; data row 3 holds '12kB'"


def test_negative_count_is_refused(tmp_path):
    rows = real_rows(NSL_KDD_TRAIN, 5)
    rows.loc[0, "count"] = "-3"
    with pytest.raises(DataValidationError, match=r"column 'count': must be finite and >= 0; data row 1"):
        load_nsl_kdd(write(rows, tmp_path / "kdd.csv"))


def test_empty_category_and_label_are_refused(tmp_path):
    rows = real_rows(NSL_KDD_TRAIN, 5)
    rows.loc[1, "service"] = ""
    with pytest.raises(DataValidationError, match=r"column 'service': must be a non-empty category name"):
        load_nsl_kdd(write(rows, tmp_path / "a.csv"))
    rows = real_rows(NSL_KDD_TRAIN, 5)
    rows.loc[4, "label"] = " "
    with pytest.raises(DataValidationError, match=r"column 'label': .* data row 5 is empty"):
        load_nsl_kdd(write(rows, tmp_path / "b.csv"))


def test_missing_empty_and_binary_files_are_refused(tmp_path):
    with pytest.raises(DataValidationError, match="file does not exist"):
        load_nsl_kdd(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text(",".join([*THREAT_FEATURES, "label"]) + "\n")
    with pytest.raises(DataValidationError, match="holds no data rows"):
        load_nsl_kdd(tmp_path / "empty.csv")
    (tmp_path / "broken.csv.gz").write_bytes(gzip.compress(b"service,flag\nhttp,SF\n")[:-8])
    with pytest.raises(DataValidationError, match=r"broken\.csv\.gz: not a readable CSV file"):
        load_nsl_kdd(tmp_path / "broken.csv.gz")


def test_unknown_attack_label_is_refused(tmp_path):
    rows = real_rows(CIC_IMPROVED, 5)
    rows.loc[0, "Label"] = "DoS Hulk 2"
    with pytest.raises(DataValidationError, match=r"column 'Label': unknown CIC-IDS2017 label 'DoS Hulk 2'"):
        load_cic_improved(write(rows, tmp_path / "cic.csv"))


def test_corrected_release_columns_are_named_by_their_file_name(tmp_path):
    rows = real_rows(CIC_IMPROVED, 5).drop(columns=["FWD Init Win Bytes"])
    with pytest.raises(DataValidationError, match=r"column 'FWD Init Win Bytes': required column is missing"):
        load_cic_improved(write(rows, tmp_path / "cic.csv"))


def test_original_release_nan_rows_are_dropped_and_counted(tmp_path):
    rows = real_rows(CIC_ORIGINAL, 6)
    rows.loc[[1, 3], "Flow Bytes/s"] = "NaN"
    rows.loc[2, " Flow Packets/s"] = "Infinity"
    dataset = load_cic_original(write(rows, tmp_path / "cic.csv"))
    assert dataset.dropped["nan"] == 2 and len(dataset.frame) == 4
    assert dataset.frame.loc[1, " Flow Packets/s"] == 0.0  # original row 2 (after dropping row 1)


def test_original_release_text_in_numeric_column_is_refused(tmp_path):
    rows = real_rows(CIC_ORIGINAL, 3)
    rows.loc[0, " Flow Duration"] = "fast"
    with pytest.raises(DataValidationError, match=r"column ' Flow Duration': must be numeric; data row 1"):
        load_cic_original(write(rows, tmp_path / "cic.csv"))


def test_original_unb_files_in_cp1252_are_read(tmp_path):
    rows = real_rows(CIC_ORIGINAL, 200)
    assert rows[" Label"].str.startswith("Web Attack").any()
    utf8 = write(rows, tmp_path / "utf8.csv")
    cp1252 = tmp_path / "cp1252.csv"
    cp1252.write_bytes(utf8.read_text(encoding="utf-8").encode("cp1252"))  # as UNB shipped it: the dash is 0x96
    assert b"Web Attack \x96 " in cp1252.read_bytes()
    assert load_cic_original(cp1252).frame[LABEL].tolist() == load_cic_original(utf8).frame[LABEL].tolist()

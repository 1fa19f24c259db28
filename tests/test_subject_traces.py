"""Where a subject's pseudonym shows: the one rule of the withdraw stage and the audit."""

from __future__ import annotations

import pandas as pd

from totalseg_train.subject_traces import read_any_table, read_subject_list, rows_naming, subject_in_name


def test_names_of_a_subjects_files_and_folders():
    ids = {"s0004", "s0012"}
    assert [subject_in_name(n, ids) for n in ("s0004.nii.gz", "s0004_0000.nii.gz", "s0012", "s0004.png",
                                              "s00041.nii.gz", "ss0004.png", "s0005.nii.gz", "grid_001.png")] == [
        "s0004", "s0004", "s0012", "s0004", None, None, None, None]


def test_rows_naming_a_subject_in_any_cell(tmp_path):
    table = pd.DataFrame({"subject_id": ["s0001", "s0004", "s0002"], "paired": ["", "", "s0012"], "n": [1, 2, 3]})
    assert rows_naming(table, {"s0004", "s0012"}).tolist() == [False, True, True]
    table.to_csv(tmp_path / "t.csv", index=False)
    table.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "broken.csv").write_bytes(b"\xff\xfe\x00binary")
    assert read_any_table(tmp_path / "t.parquet").n.tolist() == [1, 2, 3]
    assert read_any_table(tmp_path / "broken.csv") is None
    assert read_subject_list(tmp_path / "t.csv") == {"s0001", "s0004", "s0002"}
    assert read_subject_list(tmp_path / "missing.csv") == set()

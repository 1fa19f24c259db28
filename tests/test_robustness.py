"""The fuzzing runs of make robustness, small: every broken input ends in an error naming the file (NIfTI) or in the
file listed / the series excluded with a reason (DICOM through curation), never in a crash."""

from __future__ import annotations

from data_prep.curate import robustness as dicom_fuzz
from totalseg_train import robustness as nifti_fuzz


def test_every_broken_nifti_is_rejected_naming_the_file(shared_dir):
    example = shared_dir / "data" / "ct_example"
    table = nifti_fuzz.fuzz(example / "example_seg.nii.gz", example / "example_ct_sm.nii.gz", per_kind=4, seed=1,
                            labels_version="v2")
    assert set(table.kind) == set(nifti_fuzz.LABEL_KINDS) | set(nifti_fuzz.PAIR_KINDS)
    assert (table.tried == 4).all() and table.crashed.sum() == 0
    # A flipped bit inside the deflate stream changes voxels silently unless the gzip CRC is checked, which the
    # readers of files that become permanent (ingest) do; every other kind is refused by every reader.
    unchecked = (table.kind == "bit_flipped") & ~table.reader.str.contains("CRC")
    assert (table[~unchecked].rejected == 4).all(), table[~unchecked & (table.rejected < 4)]
    messages = table.set_index(["kind", "reader"]).example
    assert "cut off" in messages[("truncated", "read_label_map, CRC checked (ingest)")]
    assert "not a CT in Hounsfield units" in messages[("not_hu", "statistics' read_subject")]
    assert "holds 370012 of the" in messages[("huge_header", "read_label_map (export, QA, evaluation)")]


def test_broken_dicom_is_listed_or_excluded_by_curation_never_a_crash():
    table = dicom_fuzz.fuzz(per_kind=2, seed=1).set_index("kind")
    assert table.crashed.sum() == 0 and (table.tried == 2).all()
    assert table.file_listed["truncated"] == 2 and table.file_listed["pixel_data_missing"] == 2
    for kind in ("geometry_missing", "orientation_contradicts", "pixel_spacing_contradicts"):
        assert table.series_excluded[kind] == 2, table.loc[kind]

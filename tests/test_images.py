"""The shared NIfTI reader: cut-off, corrupt and non-finite files are rejected with the file's name, good ones
read; the one rule for subject file names."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from totalseg_train.images import (Geometry, ImageFileError, image_from_array, nifti_path, read_image,
                                   subject_id_of, write_image)


@pytest.fixture()
def label_file(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 105, size=(40, 50, 60), dtype=np.uint8)
    path = tmp_path / "s0001.nii.gz"
    write_image(image_from_array(labels, (1.5, 1.5, 2.0), (-10.0, 5.0, 100.0)), path)
    return path, labels


def test_complete_file_reads_back(label_file):
    path, labels = label_file
    image = read_image(path)
    assert np.array_equal(sitk.GetArrayFromImage(image), labels)
    assert image.GetSpacing() == (1.5, 1.5, 2.0)


@pytest.mark.parametrize("keep", [5000, 0.5, 0.99])
def test_cut_off_gzip_is_rejected(label_file, tmp_path, keep):
    path, _ = label_file
    data = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    # SimpleITK alone reads such a file without an error: the missing voxels come back as zeros.
    assert sitk.ReadImage(str(cut)).GetSize() == (60, 50, 40)
    with pytest.raises(ImageFileError, match=r"cut\.nii\.gz: cut off"):
        read_image(cut)


def test_cut_off_uncompressed_is_rejected(label_file, tmp_path):
    path, _ = label_file
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(sitk.ReadImage(str(path)), str(plain))
    assert read_image(plain).GetSize() == (60, 50, 40)
    plain.write_bytes(plain.read_bytes()[:-100])
    with pytest.raises(ImageFileError, match=r"plain\.nii: cut off: holds \d+ of the \d+ bytes"):
        read_image(plain)


def test_flipped_byte_found_when_data_is_verified(label_file, tmp_path):
    path, _ = label_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.nii.gz"
    flipped.write_bytes(bytes(data))
    with pytest.raises(ImageFileError, match=r"flipped\.nii\.gz: corrupt gzip data"):
        read_image(flipped, verify_data=True)


def test_several_gzip_members_are_one_file(label_file, tmp_path):
    path, labels = label_file
    raw = gzip.decompress(path.read_bytes())
    members = tmp_path / "members.nii.gz"
    members.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert np.array_equal(sitk.GetArrayFromImage(read_image(members, verify_data=True)), labels)
    members.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])[:-500])
    with pytest.raises(ImageFileError, match="cut off"):
        read_image(members)


def test_not_nifti_and_missing_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(zlib.compress(b"not an image"))
    with pytest.raises(ImageFileError, match=r"junk\.nii\.gz: not a readable NIfTI header"):
        read_image(junk)
    with pytest.raises(ImageFileError, match=r"absent\.nii\.gz: no such file"):
        read_image(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_of_a_float_file_are_rejected(tmp_path, value):
    ct = np.full((4, 5, 6), -1000.0, np.float32)
    ct[1, 2, 3] = value
    path = tmp_path / "ct.nii.gz"
    write_image(image_from_array(ct, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), path)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[1, 2, 3] == 0  # what SimpleITK alone reads
    with pytest.raises(ImageFileError, match=r"ct\.nii\.gz: NaN or infinity in 1 of 120 voxels"):
        read_image(path)


def test_the_header_of_a_cut_off_file_is_rejected_too(label_file, tmp_path):
    path, _ = label_file
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[:5000])
    assert Geometry.of_file(path).size == (60, 50, 40)
    with pytest.raises(ImageFileError, match=r"cut\.nii\.gz: cut off"):
        Geometry.of_file(cut)


def test_subject_file_names(tmp_path):
    assert nifti_path(tmp_path, "s0001") == tmp_path / "s0001.nii.gz"
    assert subject_id_of(tmp_path / "s0001.nii.gz") == "s0001"
    for name in ("s0001.nii", "s0001.mha", ".nii.gz"):
        with pytest.raises(ValueError, match=rf"{name}: expected a <subject_id>\.nii\.gz file"):
            subject_id_of(tmp_path / name)

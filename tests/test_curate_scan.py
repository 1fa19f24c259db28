"""The header scan: the fast element walker reads exactly what pydicom reads, and every encoding works."""

from __future__ import annotations

import copy
import shutil

import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from data_prep.curate.scan import FILE_COLUMNS, list_files, scan_chunk, scan_tree


def one_file_per_series(phantom_cohort, phantom_index, out):
    """The first slice of every phantom series, copied into ``out``."""
    for row in phantom_index.itertuples():
        source = sorted((phantom_cohort / row.dicom_dir).glob("*.dcm"))[0]
        shutil.copy(source, out / f"{row.exam_id}_s{row.series_number}.dcm")


def test_fast_walker_agrees_with_pydicom_on_every_encoding(phantom_cohort, phantom_index, shared_dir, tmp_path):
    one_file_per_series(phantom_cohort, phantom_index, tmp_path)
    for path in sorted((shared_dir / "data" / "ct_example" / "example_ct_dicom").iterdir())[:3]:
        shutil.copy(path, tmp_path / f"real_{path.name[-5:]}")  # JPEG 2000, Siemens private sequences
    base = pydicom.dcmread(tmp_path / "p0001_e0_s3.dcm")
    # Undefined-length sequences with nested items, a private element and UTF-8 text.
    ds = copy.deepcopy(base)
    item = Dataset()
    item.CodeValue, item.CodeMeaning = "CTABD", "CT Abdomen"
    inner = Dataset()
    inner.CodeMeaning = "nested"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([item])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    ds.add_new(0x00291010, "OB", b"\x01\x02" * 300)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SeriesDescription = "Abdomen portalvenös 3 B30f"
    ds.save_as(tmp_path / "sequences_utf8.dcm")
    implicit = copy.deepcopy(base)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    files = list_files(tmp_path)
    fast, reference = scan_chunk(str(tmp_path), files, fast=True), scan_chunk(str(tmp_path), files, fast=False)
    assert fast[1] == reference[1] == []
    pd.testing.assert_frame_equal(pd.DataFrame(fast[0]), pd.DataFrame(reference[0]))
    records = {r[0]: r for r in fast[0]}
    assert records["sequences_utf8.dcm"][FILE_COLUMNS.index("series_description")] == "Abdomen portalvenös 3 B30f"
    assert records["implicit.dcm"][2:-1] == records["p0001_e0_s3.dcm"][2:-1]  # same values, other transfer syntax


def test_truncated_headers_and_pixel_data_are_found(phantom_cohort, phantom_index, tmp_path):
    source = sorted((phantom_cohort / phantom_index.dicom_dir.iloc[1]).glob("*.dcm"))[0].read_bytes()
    (tmp_path / "header_cut.dcm").write_bytes(source[:600])
    (tmp_path / "pixels_cut.dcm").write_bytes(source[:-100])
    (tmp_path / "complete.dcm").write_bytes(source)
    for fast in (True, False):
        scan = scan_tree(tmp_path, workers=1, progress=False, fast=fast)
        assert dict(zip(scan.problems.path, scan.problems.problem)) == {"header_cut.dcm": "truncated",
                                                                        "pixels_cut.dcm": "truncated"}, fast
        assert scan.files.path.tolist() == ["complete.dcm"]


def _second_patient(source, out, patient_id: str) -> None:
    """The real 20-slice series again as another patient's exam (new PatientID, name and UIDs)."""
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    out.mkdir()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = patient_id, "Other^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.save_as(out / path.name)


def test_header_cache_parses_only_what_changed_and_keeps_nothing_of_patients_without_consent(shared_dir, tmp_path):
    from data_prep.curate.scan_cache import HeaderCache

    real = shared_dir / "data" / "ct_example" / "example_ct_dicom"
    root, private = tmp_path / "archive", tmp_path / "private"
    shutil.copytree(real, root / "a")
    _second_patient(real, root / "b", "NOCONSENT42")
    (root / "notes.txt").write_text("not an image")
    consenting = {pydicom.dcmread(next((root / "a").iterdir())).PatientID}
    reference = scan_tree(root, workers=1, progress=False)
    assert reference.n_files == 41 and len(reference.files) == 40 and len(reference.problems) == 1

    def scan(patients):
        cache = HeaderCache(private, patients)
        result = scan_tree(root, workers=1, progress=False, cache=cache)
        without = result.files[~result.files.patient_id.isin(patients)]
        cache.save(result.states, result.files, result.problems, result.withheld,
                   without[["series_key", "patient_id"]].drop_duplicates())
        return result

    first = scan(consenting)
    assert first.n_parsed == 41
    pd.testing.assert_frame_equal(first.files, reference.files)
    second = scan(consenting)
    assert second.n_parsed == 0, "an unchanged archive is answered from the cache"
    mine = reference.files[reference.files.patient_id.isin(consenting)].reset_index(drop=True)
    pd.testing.assert_frame_equal(second.files, mine)
    pd.testing.assert_frame_equal(second.problems, reference.problems)
    assert len(second.withheld) == 20 and second.withheld.series_hash.nunique() == 1
    other = pydicom.dcmread(next((root / "b").iterdir()))
    for path in (private / "header_cache").iterdir():
        for secret in ("NOCONSENT42", "Other^Patient", other.StudyInstanceUID, other.SeriesInstanceUID):
            assert secret.encode() not in path.read_bytes(), (path.name, secret)

    changed = sorted((root / "a").iterdir())[3]
    changed.touch()
    assert scan(consenting).n_parsed == 1, "a changed file (modification time) is parsed again"
    consented_since = scan(consenting | {"NOCONSENT42"})
    assert consented_since.n_parsed == 20, "the files of a patient who consented since are parsed again"
    pd.testing.assert_frame_equal(consented_since.files, reference.files)

"""Curation is incremental and safe: a killed run resumes, a grown archive converts only new series,
annotators' exclusions and withdrawn consent remove subjects."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from data_prep.curate import curate
from data_prep.phantom.truth_labels import export_truth_labels
from totalseg_train.atomic import TMP_MARK
from totalseg_train.config import compose_config

REPO = Path(__file__).resolve().parent.parent
SUBJECT_IMAGE = re.compile(r"s\d{4}\.nii\.gz")


def link_exams(phantom_cohort: Path, index: pd.DataFrame, exam_ids, dicom: Path) -> None:
    """Hard-link the exams' DICOM folders into ``dicom`` (a growing archive, without copying)."""
    for folder in sorted({row.dicom_dir.split("/")[1] for row in index[index.exam_id.isin(exam_ids)].itertuples()}):
        shutil.copytree(phantom_cohort / "dicom" / folder, dicom / folder, copy_function=os.link)


def overrides(workspace: Path, dicom: Path, consent: Path, *extra: str) -> list[str]:
    return [f"paths.workspace={workspace}", f"dataset.dicom_root={dicom}", f"dataset.consent_csv={consent}",
            "progress=false", *extra]


def decisions_match(workspace: Path, index: pd.DataFrame) -> bool:
    series = pd.read_parquet(workspace / "curated" / "series.parquet")
    mapping = pd.read_csv(workspace / "private" / "pseudonyms.csv", dtype=str, keep_default_na=False)
    uid = dict(zip(mapping.loc[mapping.kind == "series", "pseudonym"], mapping.loc[mapping.kind == "series", "original"]))
    expected = dict(zip(index.series_uid, index.expected))
    got = series.reason.where(series.decision == "excluded", "included")
    return all(expected[uid[s]] == g for s, g in zip(series.series_id, got))


def test_killed_run_resumes_and_grown_archive_converts_only_new_series(phantom_cohort, phantom_index, tmp_path):
    dicom, workspace = tmp_path / "dicom", tmp_path / "ws"
    first_exams = ["p0000_e0", "p0001_e0", "p0007_e0", "p0007_e1"]
    link_exams(phantom_cohort, phantom_index, first_exams, dicom)
    first = phantom_index[phantom_index.exam_id.isin(first_exams) & (phantom_index.expected == "included")]
    args = overrides(workspace, dicom, phantom_cohort / "consent.csv", "workers=1")
    images, provenance = workspace / "curated" / "images", workspace / "curated" / "provenance"

    # A run killed (SIGKILL, no clean-up) as soon as its first image is complete.
    run = subprocess.Popen([sys.executable, "-m", "data_prep.curate", *args], cwd=REPO, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (images.exists() and any(SUBJECT_IMAGE.fullmatch(p.name) for p in images.iterdir())):
        assert run.poll() is None, f"curation ended before it could be killed: {run.stderr.read()[-2000:]!r}"
        assert time.monotonic() < deadline, "no image after 120 s"
        time.sleep(0.005)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = sorted(p for p in images.iterdir() if SUBJECT_IMAGE.fullmatch(p.name))
    assert 1 <= len(finished) < len(first), "the kill should land mid-way"
    # Every file named like a subject image is complete; anything else is a marked temporary.
    for path in finished:
        assert sitk.ReadImage(str(path)).GetSize()[2] in set(first.n_slices)
    assert all(p.name.startswith(TMP_MARK) for p in images.iterdir() if not SUBJECT_IMAGE.fullmatch(p.name))
    assert not (workspace / "curated" / "subjects.csv").exists()
    recorded = {p.stem: p.stat().st_mtime_ns for p in provenance.glob("*.json")} if provenance.exists() else {}
    kept = {p.name: p.stat().st_mtime_ns for p in finished if p.name.split(".")[0] in recorded}

    summary = curate(compose_config("curate", args))
    assert summary.n_subjects == len(first)
    assert summary.n_converted == len(first) - len(kept)
    assert sorted(p.name for p in images.iterdir()) == [f"s{i:04d}.nii.gz" for i in range(1, len(first) + 1)]
    assert all(images.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in kept.items())
    assert decisions_match(workspace, phantom_index[phantom_index.exam_id.isin(first_exams)])
    key_before = pd.read_csv(workspace / "private" / "pseudonym_key.csv", dtype=str)
    mtimes = {p.name: p.stat().st_mtime_ns for p in images.iterdir()}

    # The archive grows: only the new series are converted; earlier subjects keep ids and files.
    rest = sorted(set(phantom_index.exam_id) - set(first_exams))
    files_before = sum(1 for p in dicom.rglob("*") if p.is_file())
    link_exams(phantom_cohort, phantom_index, rest, dicom)
    summary = curate(compose_config("curate", args))
    assert summary.n_parsed == sum(1 for p in dicom.rglob("*") if p.is_file()) - files_before, \
        "only the new files' headers are parsed (the header cache answers for the others)"
    new = phantom_index[phantom_index.exam_id.isin(rest) & (phantom_index.expected == "included")]
    assert summary.n_converted == len(new) > 0
    assert summary.n_subjects == len(first) + len(new)
    assert all(images.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in mtimes.items())
    key = pd.read_csv(workspace / "private" / "pseudonym_key.csv", dtype=str)
    pd.testing.assert_frame_equal(key.iloc[: len(key_before)], key_before)
    assert decisions_match(workspace, phantom_index)
    assert not any(p.name.startswith(TMP_MARK) for p in images.iterdir())

    # Nothing new: nothing parsed, nothing converted, the same tables.
    series = pd.read_parquet(workspace / "curated" / "series.parquet")
    again = curate(compose_config("curate", args))
    assert again.n_converted == 0 and again.n_parsed == 0 and again.n_without_consent == summary.n_without_consent
    pd.testing.assert_frame_equal(pd.read_parquet(workspace / "curated" / "series.parquet"), series)


def test_annotator_exclusions_and_withdrawn_consent(phantom_cohort, phantom_index, tmp_path):
    dicom, workspace = tmp_path / "dicom", tmp_path / "ws"
    link_exams(phantom_cohort, phantom_index, ["p0001_e0", "p0007_e0", "p0007_e1"], dicom)
    consent = phantom_cohort / "consent.csv"
    first = curate(compose_config("curate", overrides(workspace, dicom, consent)))
    subjects = first.subjects.set_index("subject_id")
    assert len(subjects) == 4
    pair = subjects[subjects.paired_subject_id != ""].index.tolist()
    assert len(pair) == 2

    exclusions = tmp_path / "excluded.csv"
    pd.DataFrame({"subject_id": [pair[0]], "reason": ["metal artefacts"]}).to_csv(exclusions, index=False)
    second = curate(compose_config("curate", overrides(workspace, dicom, consent, f"dataset.exclusions_csv={exclusions}")))
    row = second.series.set_index("series_id").loc[subjects.loc[pair[0], "series_id"]]
    assert (row.decision, row.reason) == ("excluded", "annotator_excluded") and "metal artefacts" in row.detail
    assert pair[0] not in set(second.subjects.subject_id) and second.n_converted == 0 and second.n_removed == 1
    assert not (workspace / "curated" / "images" / f"{pair[0]}.nii.gz").exists()
    assert second.subjects.set_index("subject_id").loc[pair[1], "paired_subject_id"] == ""
    # Excluded by the annotators does not hand the exam's place to the bone-kernel series.
    assert (second.series.reason == "not_selected").sum() == (first.series.reason == "not_selected").sum()

    truth = [workspace / "private" / "pseudonym_key.csv", phantom_cohort / "truth", workspace / "curated" / "images",
             workspace / "truth_labels"]
    assert sorted(export_truth_labels(*truth).subject_id) == sorted(second.subjects.subject_id)

    # The thorax patient withdraws consent: subjects, images, truth labels and identifying key entries go.
    withdrawn = phantom_index.loc[phantom_index.exam_id == "p0007_e0", "patient_id"].iloc[0]
    registry = pd.read_csv(consent, dtype=str, keep_default_na=False)
    registry.loc[registry.patient_id == withdrawn, "research_consent"] = "no"
    changed = tmp_path / "consent_now.csv"
    registry.to_csv(changed, index=False)
    third = curate(compose_config("curate", overrides(workspace, dicom, changed, f"dataset.exclusions_csv={exclusions}")))
    assert third.n_subjects == 1 and third.n_removed == 2
    assert sorted(p.name for p in (workspace / "curated" / "images").iterdir()) == [f"{pair[1]}.nii.gz"]
    assert third.n_without_consent == (phantom_index.patient_id == withdrawn).sum() == 3
    assert len(third.series) == len(second.series) - 3 and "no_consent" not in set(third.series.reason)
    for private in (workspace / "private").rglob("*"):
        if private.is_file():
            assert withdrawn.encode() not in private.read_bytes(), private.name
    cache = workspace / "private" / "header_cache"
    assert withdrawn not in set(pd.read_parquet(cache / "records.parquet").patient_id), "cached headers forgotten"
    withheld = pd.read_parquet(cache / "withheld.parquet")
    assert list(withheld.columns) == ["path", "size", "mtime_ns", "series_hash", "patient_hash"]
    assert withheld.series_hash.nunique() == 3, "the withdrawn patient's three series, as keyed hashes only"
    key = pd.read_csv(workspace / "private" / "pseudonym_key.csv", dtype=str, keep_default_na=False)
    assert len(key) == 4 and (key.PatientID == "").sum() == 2  # ids retired, never reused
    exported = export_truth_labels(*truth)
    assert exported.removed.sum() == 2
    assert sorted(p.name for p in (workspace / "truth_labels").iterdir()) == [f"{pair[1]}.nii.gz"]

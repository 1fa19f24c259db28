"""Pseudonymisation: no output of curation holds an identifying string of its input DICOM."""

from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path

import pandas as pd
import pydicom

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "InstitutionAddress")


def identifying_strings(dicom_root: Path) -> set[str]:
    """Every identifying value of the input (one file per series folder), with the parts of names and addresses."""
    found: set[str] = set()
    for folder in sorted({p.parent for p in dicom_root.rglob("*.dcm")}):
        ds = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
        for keyword in IDENTIFYING:
            value = str(ds.get(keyword, "") or "")
            if not value:
                continue
            found.add(value)
            # Parts of a name or an address are identifying on their own ("Meier", "Spitalstrasse 21").
            found.update(part for part in re.split(r"[\^,]\s*", value) if len(part) >= 4)
    return found


def readable_bytes(path: Path) -> bytes:
    """The file's bytes as written, plus what compression hides: gunzipped NIfTI, parquet as text."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        # Text lives in the gzip header's name / comment fields and in the decompressed data; the deflate
        # stream itself is searched no further, since its random bytes matched a 4-letter first name once.
        named = raw[3] & 0x18  # FNAME | FCOMMENT
        raw = raw[: 10 + (1024 if named else 0)] + gzip.decompress(raw)
    if path.suffix == ".parquet":
        raw += pd.read_parquet(io.BytesIO(raw)).to_csv(index=False).encode()
    return raw


def curation_outputs(workspace: Path) -> list[Path]:
    """Everything curation and the truth export wrote outside raw/ and private/, Hydra's run logs included."""
    roots = [workspace / "curated", workspace / "truth_labels", workspace / "logs" / "curate"]
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    return files + sorted((workspace / "reports").glob("characteristics.*"))


def leaks(files: list[Path], secrets: set[str]) -> list[tuple[str, str]]:
    """(file, secret) for every secret found in a file, searched in one pass per file."""
    pattern = re.compile(b"|".join(re.escape(s.encode()) for s in sorted(secrets, key=len, reverse=True)))
    return sorted({(str(path), m.group().decode()) for path in files for m in pattern.finditer(readable_bytes(path))})


def test_no_identifying_string_in_any_output(curated_workspace, phantom_cohort):
    secrets = identifying_strings(phantom_cohort / "dicom")
    assert len(secrets) > 30 and any(s.startswith("PID") for s in secrets)
    files = curation_outputs(curated_workspace)
    names = {p.name for p in files}
    assert {"series.parquet", "subjects.csv", "curation.json", "characteristics.md", "characteristics.csv"} <= names
    assert any(n.endswith(".log") for n in names) and any(n == "config.yaml" for n in names)
    assert sum(p.name.endswith(".nii.gz") for p in files) == 2 * 7  # images and truth labels
    assert leaks(files, secrets) == []
    # The search finds what is there: the private key does hold the PatientIDs.
    key = curated_workspace / "private" / "pseudonym_key.csv"
    assert leaks([key], {s for s in secrets if s.startswith("PID")})


def test_patients_without_consent_leave_no_trace_but_a_count(curated_workspace, phantom_index):
    series = pd.read_parquet(curated_workspace / "curated" / "series.parquet")
    summary = json.loads((curated_workspace / "curated" / "curation.json").read_text())
    refused_series = (phantom_index.consent != "yes").sum()
    assert summary["without_consent"] == refused_series == 2
    assert len(series) == len(phantom_index) - refused_series and summary["series"] == len(phantom_index)
    assert "no_consent" not in set(series.reason)
    key = pd.read_csv(curated_workspace / "private" / "pseudonym_key.csv", dtype=str)
    refused = set(phantom_index.loc[phantom_index.consent != "yes", "patient_id"])
    assert not refused & set(key.PatientID)
    mapping = pd.read_csv(curated_workspace / "private" / "pseudonyms.csv", dtype=str)
    assert not refused & set(mapping.original)
    refused_uids = set(phantom_index.loc[phantom_index.consent != "yes", "series_uid"])
    assert not refused_uids & set(mapping.original), "series of patients without consent get no pseudonym"

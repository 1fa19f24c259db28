"""Pseudonymisation: no output of curation holds an identifying string of its input DICOM."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from totalseg_train.identifying_data import audit, identifying_values

def curation_outputs(workspace: Path) -> list[Path]:
    """Everything curation and the truth export wrote outside raw/ and private/, Hydra's run logs included."""
    roots = [workspace / "curated", workspace / "truth_labels", workspace / "logs" / "curate"]
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    return files + sorted((workspace / "reports").glob("characteristics.*"))


def test_no_identifying_string_in_any_output(curated_workspace, phantom_cohort):
    values = identifying_values(phantom_cohort / "dicom")  # the audit's search (totalseg_train.identifying_data)
    assert len(values) > 30 and any(v.startswith("PID") for v in values)
    files = curation_outputs(curated_workspace)
    names = {p.name for p in files}
    assert {"series.parquet", "subjects.csv", "curation.json", "characteristics.md", "characteristics.csv"} <= names
    assert any(n.endswith(".log") for n in names) and any(n == "config.yaml" for n in names)
    assert sum(p.name.endswith(".nii.gz") for p in files) == 2 * 7  # images and truth labels
    skip = [curated_workspace / "raw", curated_workspace / "private"]
    assert audit(curated_workspace, values, skip, withdrawn=set(), withdrawn_skip=[]) == []
    # The search finds what is there: the private key does hold the PatientIDs.
    assert {f.kind for f in audit(curated_workspace / "private", values, [], set(), [])} >= {"PatientID"}


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

"""The consent gate: only series of patients whose research consent the registry records as given go on.

The gate runs before every rule and has no switch: a series that does not pass it is never described,
judged, pseudonymised or listed; curation keeps nothing of it but a count. A series without a PatientID
(an anonymised export) cannot be looked up in a registry of patients and never passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd


def read_consent(path: str | Path, patient_column: str, consent_column: str) -> dict[str, str]:
    """PatientID -> the registry's consent value."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: consent registry not found (set dataset.consent_csv)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {patient_column, consent_column} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: consent registry lacks the column(s) {sorted(missing)}; it has {list(table.columns)}")
    return dict(zip(table[patient_column].str.strip(), table[consent_column]))


def consent_given(patient_ids: pd.Series, registry: dict[str, str], accepted: Iterable[str]) -> pd.Series:
    """True where the registry holds one of the ``accepted`` values (case and surrounding blanks ignored)."""
    accepted = {str(v).strip().lower() for v in accepted} - {""}
    if not accepted:
        raise ValueError("consent.accepted is empty: name the registry value(s) that mean research consent is given")
    known = {patient: str(value).strip().lower() in accepted for patient, value in registry.items() if patient}
    return patient_ids.str.strip().map(known).fillna(False).astype(bool)


def consenting_patients(registry: dict[str, str], accepted: Iterable[str]) -> set[str]:
    """The registry's PatientIDs whose consent is given."""
    patients = pd.Series(list(registry), dtype=str)
    return set(patients[consent_given(patients, registry, accepted)].str.strip())

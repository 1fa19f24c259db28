"""Pseudonyms and the key that links them to the identifying originals (kept in the private folder).

Pseudonyms are permanent: once given, an id is never reused or renumbered, so re-running
curation over a grown archive keeps every earlier subject, patient, exam and site id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from totalseg_train.atomic import write_table

KEY_FILE = "pseudonym_key.csv"          # the contract's subject key
PSEUDONYMS_FILE = "pseudonyms.csv"      # every other mapping: kind, original, pseudonym
KEY_COLUMNS = ["subject_id", "patient", "exam", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "series_key"]
RETIRED = "retired:"                    # original of a pseudonym whose patient withdrew consent
FORMATS = {"subject": "s{:04d}", "patient": "pat{:04d}", "exam": "ex{:04d}", "site": "site{}", "series": "ser{:05d}"}


def _number(pseudonym: str) -> int:
    match = re.search(r"(\d+)$", pseudonym)
    return int(match.group(1)) if match else 0


class PseudonymStore:
    """The private tables of one workspace."""

    def __init__(self, private_dir: str | Path):
        self.private_dir = Path(private_dir)
        key_path, map_path = self.private_dir / KEY_FILE, self.private_dir / PSEUDONYMS_FILE
        self.key = (pd.read_csv(key_path, dtype=str, keep_default_na=False) if key_path.exists()
                    else pd.DataFrame(columns=KEY_COLUMNS))
        mapping = (pd.read_csv(map_path, dtype=str, keep_default_na=False) if map_path.exists()
                   else pd.DataFrame(columns=["kind", "original", "pseudonym"]))
        self._maps: dict[str, dict[str, str]] = {kind: {} for kind in FORMATS}
        for kind, original, pseudonym in mapping[["kind", "original", "pseudonym"]].itertuples(index=False):
            self._maps.setdefault(kind, {})[original] = pseudonym
        self._maps["subject"] = dict(zip(self.key["series_key"], self.key["subject_id"]))

    def assign(self, kind: str, originals: Iterable[str]) -> dict[str, str]:
        """Pseudonyms of ``originals`` (new ones numbered on, in sorted order); returns the whole map."""
        known = self._maps[kind]
        following = max((_number(p) for p in known.values()), default=0) + 1
        for original in sorted(set(originals) - set(known)):
            known[original] = FORMATS[kind].format(following)
            following += 1
        return known

    def subject_ids(self) -> dict[str, str]:
        """series_key -> subject_id of every series ever curated."""
        return dict(self._maps["subject"])

    def add_subjects(self, rows: pd.DataFrame) -> None:
        """Give subject ids to newly included series; ``rows`` has series_key, patient, exam, patient_id,
        study_uid, series_uid and a sort order."""
        new = rows[~rows["series_key"].isin(self._maps["subject"])]
        ids = self.assign("subject", [])  # the current map; numbering continues below in the rows' order
        following = max((_number(p) for p in ids.values()), default=0) + 1
        records = []
        for row in new.itertuples():
            subject_id = FORMATS["subject"].format(following)
            following += 1
            ids[row.series_key] = subject_id
            records.append({"subject_id": subject_id, "patient": row.patient, "exam": row.exam,
                            "PatientID": row.patient_id, "StudyInstanceUID": row.study_uid,
                            "SeriesInstanceUID": row.series_uid, "series_key": row.series_key})
        if records:
            self.key = pd.concat([self.key, pd.DataFrame(records, columns=KEY_COLUMNS)], ignore_index=True)

    def forget(self, kind: str, originals: Iterable[str]) -> None:
        """Drop the originals behind pseudonyms (consent withdrawn); the pseudonyms stay retired, never reused."""
        known = self._maps[kind]
        for original in set(originals) & set(known):
            pseudonym = known.pop(original)
            known[f"{RETIRED}{pseudonym}"] = pseudonym

    def forget_subjects(self, series_keys: Iterable[str]) -> list[str]:
        """Blank the identifying columns of these series' key rows; returns the subject ids retired."""
        rows = self.key["series_key"].isin(set(series_keys))
        retired = self.key.loc[rows, "subject_id"].tolist()
        for column in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
            self.key.loc[rows, column] = ""
        self.key.loc[rows, "series_key"] = RETIRED + self.key.loc[rows, "subject_id"]
        self._maps["subject"] = dict(zip(self.key["series_key"], self.key["subject_id"]))
        return retired

    def retired_subjects(self) -> list[str]:
        """Subject ids of every series whose patient withdrew consent, in any run so far."""
        return sorted(self.key.loc[self.key["series_key"].str.startswith(RETIRED), "subject_id"])

    def save(self) -> None:
        """Write both private tables (atomically), before anything derived from them is written."""
        mapping = pd.DataFrame(
            [(kind, original, pseudonym) for kind, known in self._maps.items() if kind != "subject"
             for original, pseudonym in known.items()],
            columns=["kind", "original", "pseudonym"])
        write_table(mapping, self.private_dir / PSEUDONYMS_FILE)
        write_table(self.key[KEY_COLUMNS], self.private_dir / KEY_FILE)

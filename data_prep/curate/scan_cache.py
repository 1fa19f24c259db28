"""The header scan's cache: an archive that grew is parsed again only where it changed.

Kept in the private folder (``header_cache/``) with the pseudonym key, because a file record holds the
PatientID. A file is parsed again when its path, size or modification time differ from the cached ones.
What is kept depends on consent, as everything in curation does:

- files of series that passed the consent gate, and files that are not usable DICOM images (the problem
  code and its scrubbed detail): their records as the scan made them;
- files of series that did not pass it: nothing but path, size, modification time and keyed hashes
  (HMAC with a random key kept beside the cache) of the series and of its patient. The hashes are enough to
  count those series without reading them again, and to read them again the day the registry records
  their patient's consent; nothing in them names the patient or the study.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from totalseg_train.atomic import atomic_path, write_table, write_text

CACHE_DIR = "header_cache"
VERSION = "1"  # of the record layout: a cache of another version is not used
STATE_COLUMNS = ["path", "size", "mtime_ns"]
WITHHELD_COLUMNS = [*STATE_COLUMNS, "series_hash", "patient_hash"]


@dataclass
class CachedScan:
    records: pd.DataFrame    # cached file records of unchanged files (scan.FILE_COLUMNS)
    problems: pd.DataFrame   # cached problem rows of unchanged files (scan.PROBLEM_COLUMNS)
    withheld: pd.DataFrame   # unchanged files of series without consent: path, series_hash, patient_hash
    todo: list[str]          # files to parse: new, changed, or of a patient who has consented since


def file_states(root: str, rels: list[str]) -> pd.DataFrame:
    """path, size, mtime_ns of every listed file (relative paths under ``root``)."""
    rows = []
    for rel in rels:
        stat = os.stat(os.path.join(root, rel))
        rows.append((rel, stat.st_size, stat.st_mtime_ns))
    return pd.DataFrame(rows, columns=STATE_COLUMNS)


class HeaderCache:
    def __init__(self, private: str | Path, consenting_patients: set[str]):
        """``consenting_patients``: the PatientIDs whose consent the registry records now."""
        self.folder = Path(private) / CACHE_DIR
        self._key = self._secret()
        self._consenting = {self.keyed(p) for p in consenting_patients}

    def _secret(self) -> bytes:
        path = self.folder / "key"
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_bytes(secrets.token_bytes(32))
        return path.read_bytes()

    def keyed(self, text: str) -> str:
        return hmac.new(self._key, str(text).strip().encode(), hashlib.sha256).hexdigest()[:32]

    def _read(self, name: str) -> pd.DataFrame | None:
        path, version = self.folder / f"{name}.parquet", self.folder / "version"
        if not path.is_file() or not version.is_file() or version.read_text() != VERSION:
            return None
        return pd.read_parquet(path)

    def lookup(self, states: pd.DataFrame, file_columns: list[str], problem_columns: list[str]) -> CachedScan:
        """Split the archive's files into those the cache answers for and those to parse."""
        tables = {name: self._read(name) for name in ("records", "problems", "withheld")}
        if any(t is None for t in tables.values()):
            empty = pd.DataFrame(columns=["path", "series_hash", "patient_hash"])
            return CachedScan(pd.DataFrame(columns=file_columns), pd.DataFrame(columns=problem_columns), empty,
                              list(states.path))
        current = states.set_index("path")

        def unchanged(table: pd.DataFrame) -> pd.Series:
            known = current.reindex(table.path)
            return pd.Series((known["size"].to_numpy() == table["size"].to_numpy())
                             & (known["mtime_ns"].to_numpy() == table["mtime_ns"].to_numpy()), index=table.index)

        records = tables["records"][unchanged(tables["records"])]
        problems = tables["problems"][unchanged(tables["problems"])]
        withheld = tables["withheld"]
        withheld = withheld[unchanged(withheld) & ~withheld.patient_hash.isin(self._consenting)]
        answered = set(records.path) | set(problems.path) | set(withheld.path)
        return CachedScan(records[file_columns].reset_index(drop=True),
                          problems[problem_columns].reset_index(drop=True),
                          withheld[["path", "series_hash", "patient_hash"]].reset_index(drop=True),
                          [p for p in states.path if p not in answered])

    def save(self, states: pd.DataFrame, files: pd.DataFrame, problems: pd.DataFrame, withheld: pd.DataFrame,
             series_without_consent: pd.DataFrame) -> None:
        """Store this scan for the next one. ``files``: every file record of the scan (cached ones included);
        ``withheld``: the cached files without consent still without it; ``series_without_consent``:
        series_key and patient_id of the series the consent gate stopped now: their files keep only hashes."""
        stopped = dict(zip(series_without_consent.series_key, series_without_consent.patient_id))
        state = states.set_index("path")
        kept = files[~files.series_key.isin(stopped)]
        newly_withheld = files.loc[files.series_key.isin(stopped), ["path", "series_key"]]
        newly_withheld = pd.DataFrame({"path": newly_withheld.path,
                                       "series_hash": [self.keyed(k) for k in newly_withheld.series_key],
                                       "patient_hash": [self.keyed(stopped[k]) for k in newly_withheld.series_key]})
        withheld = pd.concat([t for t in (withheld, newly_withheld) if len(t)] or [newly_withheld],
                             ignore_index=True)

        def with_state(table: pd.DataFrame) -> pd.DataFrame:
            known = state.reindex(table.path)
            return table.assign(size=known["size"].to_numpy(), mtime_ns=known["mtime_ns"].to_numpy())

        write_text(self.folder / "version", VERSION)
        write_table(with_state(kept), self.folder / "records.parquet")
        write_table(with_state(problems), self.folder / "problems.parquet")
        write_table(with_state(withheld)[WITHHELD_COLUMNS], self.folder / "withheld.parquet")

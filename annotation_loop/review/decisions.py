"""The reviewers' decisions: an append-only history, each decision bound to the label map it was made on.

Every decision is a new row (nothing is replaced or removed): subject, decision, note, reviewer, time, and the
reviewed file with its SHA-256. The latest row per subject is the subject's current decision; the bootstrap
loop's ingest accepts an "ok" only for the very file that was shown (the hash of the prediction handed out).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from totalseg_train.atomic import write_table

DECISIONS = ("ok", "needs_correction")
COLUMNS = ["subject_id", "decision", "note", "reviewer", "decided_at", "reviewed_file", "reviewed_sha256"]
MAX_NOTE = 2000


def read_decisions(path: str | Path) -> pd.DataFrame:
    """Every decision in the file, oldest first (a file of the earlier one-row-per-subject format reads with
    an empty reviewer and no reviewed file: such decisions are bound to nothing and accept nothing)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    missing = {"subject_id", "decision", "decided_at"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a decisions table (missing columns {sorted(missing)})")
    for column in set(COLUMNS) - set(table.columns):
        table[column] = ""
    return table[COLUMNS]


def latest_decisions(table: pd.DataFrame) -> pd.DataFrame:
    """The current decision of each subject: its latest row."""
    ordered = table.assign(_row=range(len(table))).sort_values(["decided_at", "_row"], kind="stable")
    return ordered.drop_duplicates("subject_id", keep="last").drop(columns="_row").set_index("subject_id")


def record_decision(path: str | Path, subject_id: str, decision: str, note: str, reviewer: str,
                    reviewed_file: str | Path, reviewed_sha256: str) -> dict:
    """Append a decision on ``reviewed_file`` (whose content hash is ``reviewed_sha256``); returns the row."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    note = " ".join(str(note).split())[:MAX_NOTE]  # one line: the CSV stays readable in any tool
    row = {
        "subject_id": subject_id,
        "decision": decision,
        "note": note,
        "reviewer": " ".join(str(reviewer).split()) or "unknown",
        "decided_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "reviewed_file": str(reviewed_file),
        "reviewed_sha256": reviewed_sha256,
    }
    table = pd.concat([read_decisions(path), pd.DataFrame([row])], ignore_index=True)
    write_table(table, path)
    return row

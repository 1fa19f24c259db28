"""The reviewer's decisions: one row per subject (the latest decision), read by the bootstrap loop's ingest."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from totalseg_train.atomic import write_table

DECISIONS = ("ok", "needs_correction")
COLUMNS = ["subject_id", "decision", "note", "decided_at"]
MAX_NOTE = 2000


def read_decisions(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a decisions table (missing columns {sorted(missing)})")
    return table[COLUMNS]


def record_decision(path: str | Path, subject_id: str, decision: str, note: str = "") -> dict:
    """Store a subject's decision (replacing an earlier one) and return the stored row."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    note = " ".join(str(note).split())[:MAX_NOTE]  # one line: the CSV stays readable in any tool
    row = {
        "subject_id": subject_id,
        "decision": decision,
        "note": note,
        "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    table = read_decisions(path)
    table = pd.concat([table[table.subject_id != subject_id], pd.DataFrame([row])], ignore_index=True)
    write_table(table.sort_values("subject_id", ignore_index=True), path)
    return row

"""The bootstrap ledger: one SQLite store of every subject's annotation state and every round.

A subject moves unlabeled -> predicted (round r, model m) -> in_correction -> reviewed, and from any state
to withdrawn when its patient withdraws consent (its history stays, without file paths). Every move
is one transaction that updates the subject and appends to its history, so a killed process
leaves either the old or the new state, never half of each.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

UNLABELED, PREDICTED, IN_CORRECTION, REVIEWED = "unlabeled", "predicted", "in_correction", "reviewed"
WITHDRAWN = "withdrawn"  # consent withdrawn: never trained on, predicted or handed out again
STATES = (UNLABELED, PREDICTED, IN_CORRECTION, REVIEWED, WITHDRAWN)
# Allowed moves; a subject in correction may also be re-predicted by a later round before review.
_TRANSITIONS = {
    UNLABELED: {PREDICTED, IN_CORRECTION},
    PREDICTED: {IN_CORRECTION, PREDICTED},
    IN_CORRECTION: {REVIEWED, PREDICTED},
    REVIEWED: {REVIEWED},
    WITHDRAWN: set(),
}
SOURCES = ("manual", "corrected_prediction", "accepted_prediction")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subjects (
    subject_id TEXT PRIMARY KEY,
    queue_position INTEGER NOT NULL,
    state TEXT NOT NULL,
    round INTEGER,
    model TEXT,
    source TEXT,
    prediction TEXT,
    final_version INTEGER NOT NULL DEFAULT 0,
    review_seq INTEGER,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id),
    from_state TEXT,
    to_state TEXT NOT NULL,
    round INTEGER,
    model TEXT,
    source TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    number INTEGER PRIMARY KEY,
    n_reviewed INTEGER NOT NULL,
    experiment TEXT NOT NULL,
    model TEXT,
    config TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    steps TEXT NOT NULL DEFAULT '[]',
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS efforts (
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id),
    version INTEGER NOT NULL,
    round INTEGER,
    source TEXT NOT NULL,
    class_id INTEGER NOT NULL,
    voxels_changed INTEGER NOT NULL,
    slices_touched INTEGER NOT NULL,
    voxels_labelled INTEGER NOT NULL,
    dice REAL,
    PRIMARY KEY (subject_id, version, class_id)
);
CREATE TABLE IF NOT EXISTS heart_priors (
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id),
    round INTEGER NOT NULL,
    model TEXT NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (subject_id, round)
);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class LedgerError(RuntimeError):
    """A move the ledger refuses (unknown subject, wrong state, final label)."""


@dataclass(frozen=True)
class Subject:
    subject_id: str
    queue_position: int
    state: str
    round: int | None
    model: str | None
    source: str | None
    prediction: str | None
    final_version: int
    review_seq: int | None


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- subjects -------------------------------------------------------------------------
    def register(self, subject_ids: Iterable[str], queue_order: list[str]) -> int:
        """Add new subjects as unlabeled; ``queue_order`` fixes who is annotated first. Returns how many were new."""
        position = {s: i for i, s in enumerate(queue_order)}
        known = {r["subject_id"] for r in self._db.execute("SELECT subject_id FROM subjects")}
        new = [s for s in subject_ids if s not in known]
        with self.transaction() as db:
            start = db.execute("SELECT COALESCE(MAX(queue_position) + 1, 0) FROM subjects").fetchone()[0]
            for i, s in enumerate(sorted(new, key=lambda s: position.get(s, len(position)))):
                db.execute(
                    "INSERT INTO subjects (subject_id, queue_position, state, final_version, updated_at) VALUES (?,?,?,0,?)",
                    (s, start + i, UNLABELED, now()),
                )
                db.execute("INSERT INTO events (subject_id, to_state, at) VALUES (?,?,?)", (s, UNLABELED, now()))
        return len(new)

    def subject(self, subject_id: str) -> Subject:
        row = self._db.execute("SELECT * FROM subjects WHERE subject_id = ?", (subject_id,)).fetchone()
        if row is None:
            raise LedgerError(f"unknown subject {subject_id!r}")
        return Subject(**{k: row[k] for k in Subject.__dataclass_fields__})

    def subjects(self, state: str | None = None) -> list[Subject]:
        query = "SELECT * FROM subjects" + (" WHERE state = ?" if state else "") + " ORDER BY queue_position"
        rows = self._db.execute(query, (state,) if state else ())
        return [Subject(**{k: r[k] for k in Subject.__dataclass_fields__}) for r in rows]

    def reviewed_in_order(self) -> list[str]:
        """Reviewed subjects in the order they became final (the deterministic training choice)."""
        rows = self._db.execute(
            "SELECT subject_id FROM subjects WHERE state = ? ORDER BY review_seq", (REVIEWED,)
        )
        return [r["subject_id"] for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM subjects GROUP BY state")
        counts = dict.fromkeys(STATES, 0)
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    def move(self, db: sqlite3.Connection, subject_id: str, to_state: str, *, round: int | None = None,
             model: str | None = None, source: str | None = None, prediction: str | None = None) -> None:
        """Move one subject inside an open transaction (see ``transaction``)."""
        row = db.execute("SELECT state, round, model FROM subjects WHERE subject_id = ?", (subject_id,)).fetchone()
        if row is None:
            raise LedgerError(f"unknown subject {subject_id!r}")
        if to_state not in _TRANSITIONS[row["state"]]:
            raise LedgerError(f"subject {subject_id}: cannot go from {row['state']} to {to_state}")
        sets = ["state = ?", "updated_at = ?"]
        values: list = [to_state, now()]
        for column, value in (("round", round), ("model", model), ("source", source), ("prediction", prediction)):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        if to_state == REVIEWED:
            sets += ["final_version = final_version + 1",
                     "review_seq = COALESCE(review_seq, (SELECT COALESCE(MAX(review_seq), 0) + 1 FROM subjects))"]
        db.execute(f"UPDATE subjects SET {', '.join(sets)} WHERE subject_id = ?", (*values, subject_id))
        db.execute(
            "INSERT INTO events (subject_id, from_state, to_state, round, model, source, at) VALUES (?,?,?,?,?,?,?)",
            # The event names the round and model the subject is in after the move, so that the history
            # alone tells which round's prediction was reviewed.
            (subject_id, row["state"], to_state, round if round is not None else row["round"],
             model if model is not None else row["model"], source, now()),
        )

    def withdraw(self, db: sqlite3.Connection, subject_id: str) -> bool:
        """Retire a subject whose patient withdrew consent: state withdrawn, the paths to its files (prediction,
        heart start maps) cleared, its history and efforts kept as numbers. False when it was retired already."""
        row = db.execute("SELECT state FROM subjects WHERE subject_id = ?", (subject_id,)).fetchone()
        if row is None:
            raise LedgerError(f"unknown subject {subject_id!r}")
        if row["state"] == WITHDRAWN:
            return False
        db.execute("UPDATE subjects SET state = ?, prediction = NULL, updated_at = ? WHERE subject_id = ?",
                   (WITHDRAWN, now(), subject_id))
        db.execute("UPDATE heart_priors SET file = '' WHERE subject_id = ?", (subject_id,))
        db.execute("INSERT INTO events (subject_id, from_state, to_state, round, model, source, at) "
                   "VALUES (?,?,?,NULL,NULL,NULL,?)", (subject_id, row["state"], WITHDRAWN, now()))
        return True

    def record_effort(self, db: sqlite3.Connection, subject_id: str, version: int, round: int | None, source: str,
                      per_class: list[dict]) -> None:
        db.executemany(
            "INSERT INTO efforts (subject_id, version, round, source, class_id, voxels_changed, slices_touched,"
            " voxels_labelled, dice) VALUES (?,?,?,?,?,?,?,?,?)",
            [(subject_id, version, round, source, e["class_id"], e["voxels_changed"], e["slices_touched"],
              e["voxels_labelled"], e["dice"]) for e in per_class],
        )

    def record_heart_prior(self, db: sqlite3.Connection, subject_id: str, round: int, model: str, file: str) -> None:
        """What the subject was handed in ``round`` (``file``) holds the heart sub-parts of the heart ``model``."""
        db.execute("INSERT OR REPLACE INTO heart_priors (subject_id, round, model, file) VALUES (?,?,?,?)",
                   (subject_id, round, model, file))

    def heart_priors(self) -> list[dict]:
        return [dict(r) for r in self._db.execute("SELECT * FROM heart_priors ORDER BY round, subject_id")]

    def handed(self, subject: Subject) -> str | None:
        """The label map the annotator of ``subject`` was given to correct: the round's prediction, else the
        start map with the heart model's sub-parts (round 0), else None (drawn from scratch)."""
        if subject.prediction:
            return subject.prediction
        row = self._db.execute("SELECT file FROM heart_priors WHERE subject_id = ? AND round = ?",
                               (subject.subject_id, subject.round)).fetchone()
        return row["file"] if row else None

    def efforts(self) -> list[dict]:
        return [dict(r) for r in self._db.execute("SELECT * FROM efforts ORDER BY subject_id, version, class_id")]

    def events(self, subject_id: str | None = None) -> list[dict]:
        query = "SELECT * FROM events" + (" WHERE subject_id = ?" if subject_id else "") + " ORDER BY id"
        return [dict(r) for r in self._db.execute(query, (subject_id,) if subject_id else ())]

    # ---- rounds ---------------------------------------------------------------------------
    def round(self, number: int) -> dict | None:
        row = self._db.execute("SELECT * FROM rounds WHERE number = ?", (number,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["steps"], out["metrics"], out["config"] = json.loads(out["steps"]), json.loads(out["metrics"]), json.loads(out["config"])
        return out

    def rounds(self) -> list[dict]:
        numbers = [r["number"] for r in self._db.execute("SELECT number FROM rounds ORDER BY number")]
        return [self.round(n) for n in numbers]

    def start_round(self, number: int, n_reviewed: int, experiment: str, config: dict) -> dict:
        """Open round ``number`` or return it unchanged when it exists (a resumed round)."""
        existing = self.round(number)
        if existing is not None:
            if existing["n_reviewed"] != n_reviewed:
                raise LedgerError(f"round {number} was started with N={existing['n_reviewed']}, not {n_reviewed}")
            return existing
        with self.transaction() as db:
            db.execute(
                "INSERT INTO rounds (number, n_reviewed, experiment, config, started_at) VALUES (?,?,?,?,?)",
                (number, n_reviewed, experiment, json.dumps(config, default=str), now()),
            )
        return self.round(number)

    def finish_step(self, number: int, step: str, metrics: dict | None = None, model: str | None = None) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT steps, metrics FROM rounds WHERE number = ?", (number,)).fetchone()
            steps, merged = json.loads(row["steps"]), json.loads(row["metrics"])
            if step not in steps:
                steps.append(step)
            merged.update(metrics or {})
            db.execute("UPDATE rounds SET steps = ?, metrics = ? WHERE number = ?",
                       (json.dumps(steps), json.dumps(merged, default=float), number))
            if model is not None:
                db.execute("UPDATE rounds SET model = ? WHERE number = ?", (model, number))

    def finish_round(self, number: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE rounds SET finished_at = ? WHERE number = ?", (now(), number))

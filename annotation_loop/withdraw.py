"""python -m annotation_loop.withdraw: a patient's withdrawn consent reaches every output of the workspace.

Curation retires the subjects of a patient who withdrew (``<paths.curated>/withdrawn.csv``: pseudonyms only) and
deletes their images. This stage does the rest, for every retired subject, anywhere under the workspace but the
inputs, the private key folder and the run logs:

- files and folders named for the subject (``<id>.nii.gz``, ``<id>_0000.nii.gz``, ``<id>.png``, nnU-Net's
  ``<id>.b2nd`` / ``<id>.pkl``, ``final/versions/<id>/``, ...), every other name of the same file (hard links),
  and the QA grids that showed one of its sheets (QA makes them again without it);
- rows that name the subject in every CSV and Parquet table, and the subject in every JSON list or mapping
  (splits, nnU-Net's split and dataset files, summaries);
- the ledger: the subject is retired (state ``withdrawn``), its history kept without file paths.

A trained model keeps its weights; the report names every model that was trained on the subject (from the
``totalseg_trained_with.json`` each part's model folder keeps). ``<paths.reports>/withdrawals.csv`` and
``.md`` list what was removed, by pseudonym. Running it again removes nothing more and adds nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from annotation_loop.ledger import Ledger, LedgerError
from totalseg_train.atomic import TMP_MARK, write_table, write_text
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.engine.training import TRAINED_WITH
from totalseg_train.subject_traces import (csv_separator, read_any_table, read_subject_list, rows_naming,
                                           subject_in_name)
from totalseg_train.stage_lock import stage_lock

REPORT = "withdrawals"  # .csv and .md in the reports folder
REPORT_COLUMNS = ["subject_id", "action", "path", "detail", "at"]
SHEETS, GRIDS = "subjects", "grids"  # a QA folder's sheets and the grids composed of them


def scrub_table(table: pd.DataFrame, subject_ids: set[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The table without the rows in which any cell names a subject; rows removed per subject."""
    hit = rows_naming(table, subject_ids)
    removed = {sid: int(rows_naming(table[hit], {sid}).sum()) for sid in subject_ids} if hit.any() else {}
    return table[~hit], {sid: n for sid, n in removed.items() if n}


def scrub_json(value, subject_ids: set[str], found: set[str]):
    """``value`` without list items equal to a subject and mapping entries keyed by one; ``found`` collects them."""
    if isinstance(value, dict):
        found.update(k for k in value if k in subject_ids)
        return {k: scrub_json(v, subject_ids, found) for k, v in value.items() if k not in subject_ids}
    if isinstance(value, list):
        found.update(v for v in value if isinstance(v, str) and v in subject_ids)
        return [scrub_json(v, subject_ids, found) for v in value if not (isinstance(v, str) and v in subject_ids)]
    return value


@dataclass
class Sweep:
    """What the walk found: paths to delete (by subject), tables and JSON files to look into, model records."""

    delete: dict[Path, str]
    tables: list[Path]
    documents: list[Path]
    model_records: list[Path]


def _walk(root: Path, skip: set[Path], subject_ids: set[str]) -> Sweep:
    sweep = Sweep({}, [], [], [])
    inodes: dict[tuple[int, int], str] = {}
    files: list[tuple[Path, tuple[int, int], int]] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        for d in list(dirs):
            sid = subject_in_name(d, subject_ids)
            if (here / d) in skip or d.startswith(TMP_MARK):
                dirs.remove(d)
            elif sid:
                sweep.delete[here / d] = sid
                dirs.remove(d)
        for name in names:
            path = here / name
            sid = subject_in_name(name, subject_ids)
            if path in skip or path.is_symlink():
                if sid and path not in skip:
                    sweep.delete[path] = sid  # the link goes; where it points is judged by its own name
                continue
            stat = path.stat()
            key = (stat.st_dev, stat.st_ino)
            if sid:
                sweep.delete[path] = sid
                inodes[key] = sid
                if here.name == SHEETS and (here.parent / GRIDS).is_dir():
                    for grid in (here.parent / GRIDS).glob("*.png"):
                        sweep.delete.setdefault(grid, sid)
            elif name == TRAINED_WITH:
                sweep.model_records.append(path)
            elif name.endswith((".csv", ".parquet")):
                sweep.tables.append(path)
            elif name.endswith(".json"):
                sweep.documents.append(path)
            files.append((path, key, stat.st_nlink))
    # Another name of a file that holds a subject's data (nnU-Net's raw images are hard links to the curated ones).
    for path, key, links in files:
        if links > 1 and key in inodes and path not in sweep.delete:
            sweep.delete[path] = inodes[key]
    return sweep


def _rewrite_table(path: Path, subject_ids: set[str]) -> dict[str, int]:
    table = read_any_table(path)
    if table is None:
        return {}  # not a table this stage can read; nothing named in it is touched
    kept, removed = scrub_table(table, subject_ids)
    if removed:
        write_table(kept, path, sep=csv_separator(path) if path.suffix == ".csv" else ",")
    return removed


def _rewrite_document(path: Path, subject_ids: set[str]) -> set[str]:
    try:
        document = json.loads(path.read_text())
    except (ValueError, OSError, UnicodeDecodeError):
        return set()
    found: set[str] = set()
    scrubbed = scrub_json(document, subject_ids, found)
    if found:
        write_text(path, json.dumps(scrubbed, indent=1) + "\n")
    return found


def _models_trained_on(records: list[Path], subject_ids: set[str]) -> Iterator[tuple[str, Path, str]]:
    for record in records:
        subjects = json.loads(record.read_text()).get("subjects", {})
        for group in ("train", "val"):
            for sid in sorted(subject_ids & set(subjects.get(group, []))):
                yield sid, record.parent, group


def withdraw(cfg: DictConfig) -> pd.DataFrame:
    """Remove every retired subject's data from the workspace; returns this run's report rows. Refused while a
    round or an ingest runs: both write what a withdrawal removes."""
    annotation = cfg.paths.annotation
    with stage_lock(annotation, "round"), stage_lock(annotation, "ingest"), stage_lock(annotation, "withdraw"):
        return _withdraw(cfg)


def _withdraw(cfg: DictConfig) -> pd.DataFrame:
    subject_ids = read_subject_list(Path(cfg.withdrawn_csv))
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[dict] = []
    if not subject_ids:
        return pd.DataFrame(columns=REPORT_COLUMNS)

    ledger_path = Path(cfg.bootstrap.ledger)
    if ledger_path.is_file():
        ledger = Ledger(ledger_path)
        try:
            with ledger.transaction() as db:
                for sid in sorted(subject_ids):
                    try:
                        if ledger.withdraw(db, sid):
                            rows.append({"subject_id": sid, "action": "ledger: retired", "path": str(ledger_path),
                                         "detail": "state withdrawn; history kept without file paths"})
                    except LedgerError:
                        pass  # never in the bootstrap loop
        finally:
            ledger.close()

    reports = Path(cfg.paths.reports)
    # The list this stage works from and its own report name the subjects on purpose.
    skip = {Path(p).resolve() for p in [*cfg.keep, cfg.withdrawn_csv, reports / f"{REPORT}.csv",
                                         reports / f"{REPORT}.md"]}
    sweep = _walk(Path(cfg.paths.workspace).resolve(), skip, subject_ids)
    for path, sid in sorted(sweep.delete.items()):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        rows.append({"subject_id": sid, "action": "deleted", "path": str(path), "detail": ""})
    for path in sweep.tables:
        for sid, n in sorted(_rewrite_table(path, subject_ids).items()):
            rows.append({"subject_id": sid, "action": "rows removed", "path": str(path), "detail": f"{n} rows"})
    for path in sweep.documents:
        for sid in sorted(_rewrite_document(path, subject_ids)):
            rows.append({"subject_id": sid, "action": "entries removed", "path": str(path), "detail": ""})
    for sid, folder, group in _models_trained_on(sweep.model_records, subject_ids):
        rows.append({"subject_id": sid, "action": "model trained on it (weights kept)", "path": str(folder),
                     "detail": f"{group} split"})
    return _write_report(pd.DataFrame(rows, columns=REPORT_COLUMNS).assign(at=at), reports)


def _write_report(new: pd.DataFrame, reports: Path) -> pd.DataFrame:
    """Append this run's removals (a model that saw a subject is listed once); returns the rows added."""
    csv = reports / f"{REPORT}.csv"
    before = (pd.read_csv(csv, dtype=str, keep_default_na=False) if csv.is_file()
              else pd.DataFrame(columns=REPORT_COLUMNS))
    seen = set(zip(before.subject_id, before.action, before.path))
    new = new[[not (a.startswith("model") and (s, a, p) in seen) for s, a, p in zip(new.subject_id, new.action,
                                                                                       new.path)]]
    if new.empty:
        return new
    table = pd.concat([before, new], ignore_index=True)
    write_table(table, csv)
    lines = ["# Withdrawals", "", "What was removed from the workspace for subjects whose patient withdrew consent "
             "(pseudonyms only). Trained models keep their weights; the models trained on a subject are listed.", "",
             "| subject | deleted files | tables and documents changed | ledger | models trained on it |",
             "| --- | --- | --- | --- | --- |"]
    for sid, group in table.groupby("subject_id", sort=True):
        models = "; ".join(sorted(set(group.loc[group.action.str.startswith("model"), "path"]))) or "none"
        lines.append(f"| {sid} | {(group.action == 'deleted').sum()} | "
                     f"{group.action.isin(['rows removed', 'entries removed']).sum()} | "
                     f"{'retired' if (group.action == 'ledger: retired').any() else '-'} | {models} |")
    write_text(reports / f"{REPORT}.md", "\n".join(lines) + "\n")
    return new


@hydra.main(config_path=CONFIG_PATH, config_name="withdraw", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    report = withdraw(cfg)
    if report.empty:
        print(f"nothing to remove (withdrawn subjects: {len(read_subject_list(Path(cfg.withdrawn_csv)))}, "
              f"from {cfg.withdrawn_csv})")
        return
    for sid, group in report.groupby("subject_id", sort=True):
        models = group[group.action.str.startswith("model")]
        print(f"{sid}: {(group.action == 'deleted').sum()} files deleted, "
              f"{group.action.isin(['rows removed', 'entries removed']).sum()} tables and documents changed"
              + (", retired in the ledger" if (group.action == "ledger: retired").any() else "")
              + (f"; trained models that saw it (weights kept): {', '.join(sorted(set(models.path)))}"
                 if len(models) else ""), file=sys.stdout)
    print(f"report: {Path(cfg.paths.reports) / REPORT}.csv")


if __name__ == "__main__":
    main()

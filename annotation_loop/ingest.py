"""python -m annotation_loop.ingest corrected_dir=DIR: corrected label maps become final labels.

Every file is validated before anything is stored: its name must be ``<subject_id>.nii.gz``, its subject
known and in correction, the file complete (gzip CRC checked: it becomes permanent) and a label map under
the one policy of ``totalseg_train.label_maps``, its geometry equal to the subject's image. A file identical
to its subject's final label is recognised as already stored and skipped (a folder ingested again). A rejected
file leaves the ledger unchanged and is reported by name; the others go on.

Then the review page's decisions (every ``review/decisions.csv`` under ``decisions_root``): a subject still in
correction whose latest decision on the very prediction it was handed (same SHA-256) is "ok" becomes final as
predicted, with zero effort. A correction always wins over an "ok"; an "ok" made on another file (the truth
labels' review, an earlier prediction) accepts nothing and is reported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import SimpleITK as sitk
from omegaconf import DictConfig

from annotation_loop.effort import correction_effort
from annotation_loop.ledger import IN_CORRECTION, REVIEWED, Ledger, LedgerError
from annotation_loop.label_store import FinalLabelExists, LabelStore, same_labels
from annotation_loop.report import write_round_report
from annotation_loop.review.decisions import COLUMNS, read_decisions
from annotation_loop.start import worklists_dir
from totalseg_train.checksums import file_sha256
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.images import Geometry, ImageFileError, nifti_path, subject_id_of
from totalseg_train.label_maps import LabelFileError, read_label_map
from totalseg_train.stage_lock import stage_lock


class RejectedFile(ValueError):
    """A corrected file that cannot be accepted; the message names the file and the problem."""


@dataclass
class IngestResult:
    accepted: list[str] = field(default_factory=list)
    accepted_as_predicted: list[str] = field(default_factory=list)
    already_stored: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    unbound_ok: list[tuple[str, str]] = field(default_factory=list)  # (subject, why its "ok" accepted nothing)


def validate_correction(path: Path, image_path: Path, subject_state: str, allow_revision: bool) -> sitk.Image:
    """Read and check one corrected file; RejectedFile or LabelFileError naming the file and the problem."""
    if subject_state == REVIEWED and not allow_revision:
        raise RejectedFile(f"{path}: subject is already final; corrections are never overwritten "
                           "(ingest with allow_revision=true to store a new version)")
    if subject_state not in (IN_CORRECTION, REVIEWED):
        raise RejectedFile(f"{path}: subject is {subject_state}, not in correction")
    if not image_path.exists():
        raise RejectedFile(f"{path}: no curated image {image_path} for this subject")
    label = read_label_map(path, verify_data=True)  # LabelFileError names the file and the problem
    expected, found = Geometry.of_file(image_path), Geometry.of_image(label.image)
    if not found.matches(expected):
        raise RejectedFile(f"{path}: geometry differs from the image {image_path.name}: "
                           f"{found.describe()} vs {expected.describe()}")
    return label.image


def holds_final_label(path: Path, final: Path) -> bool:
    """True when ``path`` holds exactly the subject's current final label (a folder ingested again)."""
    if not final.exists():
        return False
    try:
        return same_labels(read_label_map(path).image, read_label_map(final).image)
    except LabelFileError:  # not the stored label; validate_correction says what is wrong with it
        return False


def _store(ledger: Ledger, store: LabelStore, subject_id: str, label: sitk.Image, source: str) -> None:
    subject = ledger.subject(subject_id)
    handed = ledger.handed(subject)  # a prediction, or a start map with the heart model's sub-parts
    # The map is kept while its voxels are used: ``array`` is a view of its image's memory.
    handed_map = read_label_map(handed) if handed else None
    if handed_map is not None:
        prediction = handed_map.array
    else:  # drawn from scratch: the effort is the whole label map
        prediction = np.zeros(sitk.GetArrayViewFromImage(label).shape, np.uint8)
    version = subject.final_version + 1
    # The file first, then the ledger: a kill in between leaves a version file that a re-run
    # recognises as identical and adopts.
    store.store_final(subject_id, version, label)
    effort = correction_effort(prediction, sitk.GetArrayViewFromImage(label))
    with ledger.transaction() as db:
        ledger.move(db, subject_id, REVIEWED, source=source)
        ledger.record_effort(db, subject_id, version, subject.round, source, effort)


def review_decisions(root: str | Path | None) -> pd.DataFrame:
    """Every decision of every QA folder's review under ``root``, with the file it is in."""
    files = sorted(Path(root).rglob("review/decisions.csv")) if root and Path(root).is_dir() else []
    tables = [read_decisions(f).assign(decisions_file=str(f)) for f in files]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=[*COLUMNS, "decisions_file"])


def _accept_reviewed_predictions(ledger: Ledger, store: LabelStore, decisions: pd.DataFrame,
                                 result: IngestResult) -> None:
    for subject_id, rows in decisions.groupby("subject_id", sort=True):
        if not (rows.decision == "ok").any():
            continue
        try:
            subject = ledger.subject(subject_id)
        except LedgerError:
            continue  # a review of labels outside the bootstrap (another cohort's QA folder)
        if subject.state != IN_CORRECTION or not subject.prediction:
            continue  # already final (a correction wins), or nothing predicted to accept
        try:
            handed = file_sha256(subject.prediction)
        except OSError as err:
            result.rejected.append((subject.prediction, f"{subject.prediction}: {err}"))
            continue
        bound = rows[rows.reviewed_sha256 == handed].sort_values("decided_at", kind="stable")
        if bound.empty:
            where = ", ".join(sorted(set(rows.loc[rows.decision == "ok", "decisions_file"])))
            result.unbound_ok.append((subject_id, f"{subject_id}: the 'ok' in {where} was given to another label "
                                                  f"map, not to the prediction handed out ({subject.prediction})"))
            continue
        if bound.decision.iloc[-1] != "ok":
            continue
        try:
            # The prediction becomes a final label: checked to its CRC like a correction.
            accepted = read_label_map(subject.prediction, verify_data=True).image
            _store(ledger, store, subject_id, accepted, "accepted_prediction")
        except (ImageFileError, FinalLabelExists) as err:
            result.rejected.append((subject.prediction, str(err)))
            continue
        result.accepted_as_predicted.append(subject_id)


def _ingest_corrections(ledger: Ledger, store: LabelStore, folder: Path, images: Path, allow_revision: bool,
                        result: IngestResult) -> None:
    for path in sorted(folder.glob("*.nii*")):
        try:
            try:
                subject_id = subject_id_of(path)
            except ValueError as err:
                raise RejectedFile(str(err)) from None
            try:
                subject = ledger.subject(subject_id)
            except LedgerError:
                raise RejectedFile(f"{path}: unknown subject {subject_id!r}") from None
            if subject.state == REVIEWED and holds_final_label(path, store.current(subject_id)):
                result.already_stored.append(subject_id)
                continue
            label = validate_correction(path, nifti_path(images, subject_id), subject.state, allow_revision)
            source = "corrected_prediction" if subject.prediction else "manual"
            _store(ledger, store, subject_id, label, source)
            result.accepted.append(subject_id)
        except (RejectedFile, ImageFileError, FinalLabelExists, LedgerError) as err:
            result.rejected.append((str(path), str(err)))


def ingest(cfg: DictConfig) -> IngestResult:
    """Store the corrected files and the review's accepted predictions; one ingest at a time per workspace."""
    with stage_lock(cfg.paths.annotation, "ingest"):
        return _ingest(cfg)


def _ingest(cfg: DictConfig) -> IngestResult:
    ledger = Ledger(cfg.bootstrap.ledger)
    store = LabelStore(cfg.paths.annotation)
    result = IngestResult()
    try:
        # Corrections first: an annotator's corrected map wins over an "ok" on the prediction it corrects.
        if cfg.corrected_dir:
            _ingest_corrections(ledger, store, Path(cfg.corrected_dir), Path(cfg.bootstrap.images_dir),
                                bool(cfg.allow_revision), result)
        _accept_reviewed_predictions(ledger, store, review_decisions(cfg.decisions_root), result)
        write_round_report(ledger, Path(cfg.paths.reports), float(cfg.bootstrap.seconds_per_slice),
                       worklists_dir(Path(cfg.paths.annotation)))
    finally:
        ledger.close()
    return result


@hydra.main(config_path=CONFIG_PATH, config_name="ingest", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    result = ingest(cfg)
    print(f"accepted {len(result.accepted)} corrected label maps, "
          f"{len(result.accepted_as_predicted)} predictions marked ok on the review page"
          + (f"; {len(result.already_stored)} files already stored as final" if result.already_stored else ""))
    for _, message in result.unbound_ok:
        print(f"not accepted: {message}", file=sys.stderr)
    for path, message in result.rejected:
        print(f"REJECTED {message}", file=sys.stderr)
    if result.rejected:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""python -m annotation_loop.ingest corrected_dir=DIR: corrected label maps become final labels.

Every file is validated before anything is stored: its name must be ``<subject_id>.nii.gz``, its subject
known and in correction, the file complete (gzip CRC checked: it becomes permanent) and a label map under
the one policy of ``totalseg_train.label_maps``, its geometry equal to the subject's image. A file identical
to its subject's final label is recognised as already stored and skipped (a folder ingested again). A rejected
file leaves the ledger unchanged and is reported by name; the others go on. Subjects the reviewer
marked "ok" on the review page become final as predicted, with zero effort.
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
from totalseg_train.config import CONFIG_PATH
from totalseg_train.images import Geometry, ImageFileError, nifti_path, subject_id_of
from totalseg_train.label_maps import LabelFileError, read_label_map


class RejectedFile(ValueError):
    """A corrected file that cannot be accepted; the message names the file and the problem."""


@dataclass
class IngestResult:
    accepted: list[str] = field(default_factory=list)
    accepted_as_predicted: list[str] = field(default_factory=list)
    already_stored: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


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


def ingest(cfg: DictConfig) -> IngestResult:
    ledger = Ledger(cfg.bootstrap.ledger)
    store = LabelStore(cfg.paths.annotation)
    images = Path(cfg.bootstrap.images_dir)
    result = IngestResult()
    try:
        decisions_csv = Path(cfg.decisions_csv) if cfg.decisions_csv else None
        if decisions_csv is not None and decisions_csv.exists():
            decisions = pd.read_csv(decisions_csv, keep_default_na=False)
            for row in decisions[decisions.decision == "ok"].itertuples():
                try:
                    subject = ledger.subject(row.subject_id)
                except LedgerError:
                    result.rejected.append((str(decisions_csv), f"{decisions_csv}: unknown subject {row.subject_id!r}"))
                    continue
                if subject.state != IN_CORRECTION or not subject.prediction:
                    continue  # already final, or nothing predicted to accept
                try:
                    # The prediction becomes a final label: checked to its CRC like a correction.
                    accepted = read_label_map(subject.prediction, verify_data=True).image
                    _store(ledger, store, row.subject_id, accepted, "accepted_prediction")
                except (ImageFileError, FinalLabelExists) as err:
                    result.rejected.append((subject.prediction, str(err)))
                    continue
                result.accepted_as_predicted.append(row.subject_id)
        if cfg.corrected_dir:
            files = sorted(Path(cfg.corrected_dir).glob("*.nii*"))
            for path in files:
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
                    label = validate_correction(path, nifti_path(images, subject_id), subject.state,
                                                bool(cfg.allow_revision))
                    source = "corrected_prediction" if subject.prediction else "manual"
                    _store(ledger, store, subject_id, label, source)
                    result.accepted.append(subject_id)
                except (RejectedFile, ImageFileError, FinalLabelExists, LedgerError) as err:
                    result.rejected.append((str(path), str(err)))
        write_round_report(ledger, Path(cfg.paths.reports), float(cfg.bootstrap.seconds_per_slice))
    finally:
        ledger.close()
    return result


@hydra.main(config_path=CONFIG_PATH, config_name="ingest", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = ingest(cfg)
    print(f"accepted {len(result.accepted)} corrected label maps, "
          f"{len(result.accepted_as_predicted)} predictions marked ok on the review page"
          + (f"; {len(result.already_stored)} files already stored as final" if result.already_stored else ""))
    for path, message in result.rejected:
        print(f"REJECTED {message}", file=sys.stderr)
    if result.rejected:
        sys.exit(1)


if __name__ == "__main__":
    main()

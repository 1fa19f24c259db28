"""python -m annotation_loop.release: the reviewed cohort as a dataset in TotalSegmentator's public layout.

``<out>/<subject_id>/ct.nii.gz`` (the curated CT, its face region blurred or filled), ``<out>/<subject_id>/
segmentations/<class_name>.nii.gz`` (one 0/1 mask per v1 class, empty ones included), ``<out>/meta.csv``
(semicolon-separated: image_id;age;gender;institute;study_type;split;manufacturer;scanner_model;kvp),
``<out>/classes.csv`` and a dataset card, ``<out>/README.md``.

Only subjects whose final label was reviewed (the ledger's ``reviewed``), who are in curation's subjects table
and not retired by a withdrawal are released; a released subject that no longer is one leaves the release. The
release reads the curated images, the final labels, the ledger, the split and the heart labels' index, never
the private key; the data-protection audit (``totalseg_train.identifying_data``) then searches every file of it
for the input's identifying values and for withdrawn subjects, and a release with a finding gets no card and
fails. Subjects whose image, final label and face settings did not change are not written again (a record in
the reports folder); every file is written under a temporary name, a subject's folder appears whole, and a
release built twice from the same state is identical byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import hydra
import pandas as pd
import SimpleITK as sitk
from omegaconf import DictConfig
from tqdm import tqdm

from annotation_loop.defacing import DefaceSettings, deface
from annotation_loop.ledger import REVIEWED, Ledger
from totalseg_train import classes
from totalseg_train.atomic import atomic_path, write_table, write_text
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.engine.split import Split, SplitSettings, draw_split, read_split
from totalseg_train.identifying_data import Finding, audit, identifying_values
from totalseg_train.images import ImageFileError, nifti_path, read_image, write_image
from totalseg_train.label_maps import read_label_map
from totalseg_train.public_layout import CT_FILE, META_FILE, META_SEPARATOR, SEGMENTATIONS, write_masks
from totalseg_train.report.characteristics import characteristics_table, to_markdown
from totalseg_train.shards import input_key
from totalseg_train.stage_lock import stage_lock
from totalseg_train.subject_traces import read_subject_list

log = logging.getLogger("annotation_loop.release")
CARD, CLASSES_FILE = "README.md", "classes.csv"
# the ledger's label source -> the card's words
LABEL_SOURCES = {"manual": "drawn", "corrected_prediction": "corrected", "accepted_prediction": "accepted"}
META_COLUMNS = ["image_id", "age", "gender", "institute", "study_type", "split", "manufacturer", "scanner_model", "kvp"]
RECORD_COLUMNS = ["subject_id", "fingerprint", "face_voxels"]


class ReleaseRefused(RuntimeError):
    """The release cannot be built from this state; the message says why and what to do."""


def release_subject(subject_id: str, image_file: Path, label_file: Path, out: Path, face: DefaceSettings) -> int:
    """Write ``<out>/<subject_id>/`` whole; returns the number of CT voxels defaced."""
    image = read_image(image_file)
    labels = read_label_map(label_file)
    if image.GetSize() != labels.image.GetSize():
        raise ImageFileError(f"{label_file}: grid {labels.image.GetSize()} differs from the image's {image.GetSize()}")
    ct, n = deface(sitk.GetArrayViewFromImage(image), labels.array, labels.spacing_zyx, face)
    with atomic_path(out / subject_id) as tmp:
        tmp.mkdir()
        if n:
            defaced = sitk.GetImageFromArray(ct)
            defaced.CopyInformation(image)
            write_image(defaced, tmp / CT_FILE)
        else:
            shutil.copyfile(image_file, tmp / CT_FILE)
        write_masks(label_file, classes.class_ids(), tmp / SEGMENTATIONS)
    return n


def releasable(ledger: Ledger, subjects: pd.DataFrame, withdrawn: set[str]) -> list[str]:
    """Reviewed subjects that curation still holds and no withdrawal retired, in id order."""
    curated = set(subjects.subject_id)
    return sorted(s.subject_id for s in ledger.subjects(REVIEWED) if s.subject_id in curated
                  and s.subject_id not in withdrawn)


def release_split(split_file: Path, patient_of: dict[str, str], settings: SplitSettings) -> tuple[Split, str]:
    """The training split where it holds every released subject, else one drawn for the release (patient-level,
    seeded); and a sentence saying which."""
    if split_file.is_file():
        stored = read_split(split_file)
        group = stored.group_of()
        if set(patient_of) <= set(group):
            members = {g: tuple(s for s in getattr(stored, g) if s in patient_of) for g in ("train", "val", "test")}
            return Split(members["train"], members["val"], members["test"], stored.settings), \
                "the split the models were trained with"
    return draw_split(patient_of, settings), "drawn for the release at the patient level (seed " \
        f"{settings.seed}); the training split does not hold every released subject"


def meta_table(subjects: pd.DataFrame, group_of: dict[str, str]) -> pd.DataFrame:
    """meta.csv's rows, in TotalSegmentator's column names, for the released subjects."""
    s = subjects.fillna("")
    phase = s.contrast_phase.astype(str).where(s.contrast_phase.astype(str) != "", "unknown")
    return pd.DataFrame({
        "image_id": s.subject_id, "age": s.age, "gender": s.sex.astype(str).str.lower(), "institute": s.site,
        "study_type": "ct " + s.body_region.astype(str) + " " + phase, "split": s.subject_id.map(group_of),
        "manufacturer": s.manufacturer, "scanner_model": s.model, "kvp": s.kvp,
    }, columns=META_COLUMNS)


def label_sources(ledger: Ledger, subject_ids: list[str], heart_index: Path) -> pd.DataFrame:
    """Per subject: how its final label came about, and where its heart sub-parts' training label came from."""
    heart = {}
    if heart_index.is_file():
        index = pd.read_csv(heart_index, dtype=str, keep_default_na=False)
        heart = dict(zip(index.subject_id, index.source))
    rows = [{"image_id": sid, "labels": LABEL_SOURCES.get(ledger.subject(sid).source or "", "unknown"),
             "heart_labels": {"transferred": "heart transfer"}.get(heart.get(sid, ""), heart.get(sid, "none"))}
            for sid in subject_ids]
    return pd.DataFrame(rows, columns=["image_id", "labels", "heart_labels"])


def classes_table() -> pd.DataFrame:
    return pd.DataFrame([{"id": c.id, "name": c.name, "category": c.category, "part": c.part}
                         for c in classes.all_classes()])


def _markdown(table: pd.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]


def dataset_card(cfg: DictConfig, meta: pd.DataFrame, characteristics: pd.DataFrame, sources: pd.DataFrame,
                 face: DefaceSettings, defaced: int, split_note: str) -> str:
    """The release's README.md: what it holds, how it was built, who it describes (counts only)."""
    counts = meta.split.value_counts()
    by_source = sources.labels.value_counts()
    heart = sources.heart_labels.value_counts()
    how = (f"blurred (Gaussian, sigma {face.sigma_mm:g} mm)" if face.method == "blur"
           else f"replaced by {face.fill_hu:g} HU")
    lines = [
        f"# {cfg.name}", "",
        f"{len(meta)} CT images with segmentations of the {classes.num_classes()} anatomical structures of "
        "TotalSegmentator v1 (27 organs, 59 bones, 10 muscles, 8 vessels), in TotalSegmentator's public layout.", "",
        "## Licence", "", str(cfg.licence), "",
        "## Contents", "",
        f"- `<image_id>/{CT_FILE}`: the CT (HU), `<image_id>/{SEGMENTATIONS}/<class_name>.nii.gz`: one 0/1 mask "
        f"per class on the CT's grid, every class present as a file even when empty.",
        f"- `{META_FILE}` (`{META_SEPARATOR}`-separated): {', '.join(META_COLUMNS)}.",
        f"- `{CLASSES_FILE}`: class ids, names, categories and the part model of each class.",
        f"- Split: train {counts.get('train', 0)}, val {counts.get('val', 0)}, test {counts.get('test', 0)}; "
        f"{split_note}.", "",
        "## How it was built", "",
        "CTs of patients with research consent were curated from a hospital's DICOM archive (consent gate, "
        "exclusion of non-CT, scouts, leg and hand scans), converted to NIfTI under pseudonyms (ages above 90 "
        "reported as 90). Labels were bootstrapped: a few subjects drawn, a U-Net (nnU-Net) trained, its "
        "predictions corrected by annotators and the model retrained; every label map here was reviewed in 3D "
        "renderings. Heart sub-parts were drawn on contrast-enhanced scans and transferred by registration to "
        "native scans of the same exam.", "",
        f"Faces: the CT voxels within {face.margin_mm:g} mm of the `face` structure were {how} "
        f"({defaced} of {len(meta)} images have a face in their field of view).", "",
        "The release was searched for every identifying value of the source DICOM headers (names, patient ids, "
        "birth dates, accession numbers, institutions, original UIDs) and for subjects who withdrew consent: "
        "nothing was found.", "",
        "## Label sources", "",
        "Final labels: " + ", ".join(f"{n} {k}" for k, n in sorted(by_source.items())) + " (drawn: from scratch; "
        "corrected: a model's prediction corrected; accepted: a prediction accepted unchanged at review). Heart "
        "sub-parts' training labels: " + ", ".join(f"{n} {k}" for k, n in sorted(heart.items())) + ".", "",
        *_markdown(sources), "",
        to_markdown(characteristics, "Characteristics", level=2),
    ]
    return "\n".join(lines)


def _record(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype={"subject_id": str, "fingerprint": str})
    return {r["subject_id"]: r for r in table.to_dict("records")}


def _write_if_changed(path: Path, text: str) -> None:
    """Leave a file that already holds ``text`` untouched (a rerun of an unchanged release writes nothing)."""
    if not (path.is_file() and path.read_text() == text):
        write_text(path, text)


def _check_consent_current(cfg: DictConfig) -> None:
    registry, subjects = Path(cfg.dataset.consent_csv), Path(cfg.subjects_csv)
    if registry.is_file() and subjects.is_file() and registry.stat().st_mtime > subjects.stat().st_mtime:
        raise ReleaseRefused(f"{registry} changed after the last curation ({subjects}); run python -m "
                             "data_prep.curate and python -m annotation_loop.withdraw first, so that the release "
                             "holds only subjects whose consent is current")


def audit_release(cfg: DictConfig, out: Path, withdrawn: set[str]) -> list[Finding]:
    values = identifying_values(Path(cfg.dataset.dicom_root), Path(cfg.audit.key_csv))
    return audit(out, values, [], withdrawn, [])


@dataclass(frozen=True)
class Released:
    meta: pd.DataFrame            # meta.csv: the subjects released
    findings: list[Finding]       # the audit's
    errors: dict[str, str]        # subject -> the error that kept it out (a bad file)

    @property
    def complete(self) -> bool:
        return not self.findings and not self.errors


def run(cfg: DictConfig) -> Released:
    """Build or bring up to date the release. It gets its card only when complete: no subject failed and the
    audit found nothing."""
    out, record_file = Path(cfg.out), Path(cfg.record)
    face = DefaceSettings.from_config(cfg.face)
    _check_consent_current(cfg)
    subjects = pd.read_csv(cfg.subjects_csv, dtype={"subject_id": str, "patient": str}, keep_default_na=False)
    withdrawn = read_subject_list(Path(cfg.withdrawn_csv))
    if not Path(cfg.ledger).is_file():
        raise ReleaseRefused(f"{cfg.ledger}: no ledger; the release holds the subjects the bootstrap loop reviewed "
                             "(python -m annotation_loop.start, then ingest)")
    ledger = Ledger(cfg.ledger)
    try:
        released = releasable(ledger, subjects, withdrawn)
        if not released:
            raise ReleaseRefused(f"no reviewed subject to release (ledger {cfg.ledger})")
        sources = label_sources(ledger, released, Path(cfg.heart_index))
    finally:
        ledger.close()
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in out.iterdir() if (p / SEGMENTATIONS).is_dir() and p.name not in released):
        shutil.rmtree(folder)  # no longer releasable: not reviewed, withdrawn or no longer curated
        log.info("removed %s from the release", folder.name)
    labels_dir, images_dir = Path(cfg.labels_dir), Path(cfg.images_dir)
    settings = json.dumps(asdict(face), sort_keys=True)
    fingerprints, errors = {}, {}
    for sid in released:
        sources_of = [nifti_path(images_dir, sid), nifti_path(labels_dir, sid)]
        try:
            for path in sources_of:
                path.stat()
        except OSError as err:
            errors[sid] = f"{err.filename}: {err.strerror}"
            continue
        # sizes and modification times, not contents: a rerun of 1204 subjects must not read every CT again
        fingerprints[sid] = hashlib.sha256(input_key(sources_of, settings).encode()).hexdigest()
    released = [sid for sid in released if sid in fingerprints]
    record = _record(record_file)
    done = {sid: int(record[sid]["face_voxels"]) for sid in released if sid in record
            and record[sid]["fingerprint"] == fingerprints[sid] and (out / sid / SEGMENTATIONS).is_dir()}
    todo = [sid for sid in released if sid not in done]
    log.info("release of %d subjects: %d up to date, %d to write", len(released), len(done), len(todo))
    face_voxels = dict(done)
    with tqdm(total=len(todo), desc="release", unit="subject", disable=not cfg.progress) as bar, ExitStack() as stack:
        job = partial(_release_one, images_dir=images_dir, labels_dir=labels_dir, out=out, face=face)
        if int(cfg.workers) <= 1 or len(todo) <= 1:
            results = map(job, todo)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=min(int(cfg.workers), len(todo)),
                                                           mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(job, todo)
        for sid, (n, error) in zip(todo, results):
            bar.update()
            if error:
                errors[sid] = error
                continue
            face_voxels[sid] = n
            # recorded as each subject is done, so that a killed run does not write it again
            write_table(pd.DataFrame([{"subject_id": s, "fingerprint": fingerprints[s], "face_voxels": face_voxels[s]}
                                      for s in released if s in face_voxels], columns=RECORD_COLUMNS), record_file)
    released = [sid for sid in released if sid not in errors]
    chosen = subjects.set_index("subject_id").loc[released].reset_index()
    split, split_note = release_split(Path(cfg.split.file), dict(zip(chosen.subject_id, chosen.patient)),
                                      SplitSettings.from_config(cfg.split))
    meta = meta_table(chosen, split.group_of())
    for name, table in ((META_FILE, meta), (CLASSES_FILE, classes_table())):
        _write_if_changed(out / name, table.to_csv(sep=META_SEPARATOR, index=False))
    characteristics = characteristics_table(chosen, list(cfg.characteristics.age_bins),
                                            list(cfg.characteristics.slice_thickness_bins_mm))
    card = dataset_card(cfg, meta, characteristics, sources, face, sum(1 for n in face_voxels.values() if n),
                        split_note)
    (out / CARD).unlink(missing_ok=True)  # a release is complete only with its card, written after the audit
    findings = audit_release(cfg, out, withdrawn)
    if not findings and not errors:
        write_text(out / CARD, card)
    return Released(meta, findings, errors)


def _release_one(subject_id: str, images_dir: Path, labels_dir: Path, out: Path,
                 face: DefaceSettings) -> tuple[int, str]:
    """(voxels defaced, "") or (0, the error naming the file): one bad file leaves the others going on."""
    try:
        return release_subject(subject_id, nifti_path(images_dir, subject_id), nifti_path(labels_dir, subject_id),
                               out, face), ""
    except (ImageFileError, OSError) as err:
        return 0, str(err)


@hydra.main(config_path=CONFIG_PATH, config_name="release", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    try:
        with stage_lock(cfg.out, "release"):
            released = run(cfg)
    except (ReleaseRefused, ImageFileError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    for sid, error in sorted(released.errors.items()):
        print(f"error: {sid} not released: {error}", file=sys.stderr)
    for f in released.findings:
        print(f"{f.path}: {f.kind}", file=sys.stderr)
    if not released.complete:
        problems = [f"{len(released.errors)} subjects failed"] if released.errors else []
        if released.findings:
            problems.append(f"the data-protection audit found {len(released.findings)} identifying values or "
                            f"withdrawn subjects in {len({f.path for f in released.findings})} files (values not "
                            "shown; see the list above)")
        sys.exit(f"release FAILED: {'; '.join(problems)}. {cfg.out} has no dataset card and must not be shared")
    meta = released.meta
    counts = meta.split.value_counts()
    print(f"released {len(meta)} subjects to {cfg.out} (train {counts.get('train', 0)}, val {counts.get('val', 0)}, "
          f"test {counts.get('test', 0)}); audit: nothing found; card: {Path(cfg.out) / CARD}")


if __name__ == "__main__":
    main()

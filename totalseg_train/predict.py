"""python -m totalseg_train.predict model=<results>/<experiment> input=<CT> output=<folder> [classes=[...]] [masks=true]

A trained model applied to CTs as TotalSegmentator's command applies its models: a NIfTI file, a folder of
them or one DICOM series folder in; one v1 label map per image, or one binary mask per class, out, on each
image's grid. The prediction itself is the engine's ``predict`` (the part models the model folder names).

The output folder records what it was predicted with (``prediction.json``: model, its training time, classes,
masks); a run with other settings into the same folder stops with an error instead of mixing outputs.
Images whose output exists are skipped, so an interrupted run goes on where it stopped.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hydra
import SimpleITK as sitk
from omegaconf import DictConfig

from totalseg_train import classes
from totalseg_train.atomic import remove_stale_temporaries, write_text
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.engine.inference import predict
from totalseg_train.engine.manifest import UntrainedModel, read_model_manifest
from totalseg_train.images import NIFTI_SUFFIX, ImageFileError, nifti_path, subject_id_of, write_image
from totalseg_train.public_layout import write_masks

log = logging.getLogger("totalseg_train.predict")
SETTINGS_FILE = "prediction.json"


@dataclass(frozen=True)
class Inputs:
    """The images to predict: NIfTI files, and DICOM series folders converted on the way (by subject id)."""

    nifti: tuple[Path, ...]
    dicom: tuple[tuple[str, Path], ...]

    @property
    def subject_ids(self) -> list[str]:
        return sorted([subject_id_of(p) for p in self.nifti] + [sid for sid, _ in self.dicom])


def find_inputs(path: str | Path) -> Inputs:
    """A NIfTI file, a folder of NIfTI files, or a folder holding exactly one DICOM series; ValueError or
    FileNotFoundError naming the path and what is wrong with it."""
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(NIFTI_SUFFIX):
            raise ValueError(f"{path}: not a {NIFTI_SUFFIX} image (give a NIfTI file or a folder)")
        return Inputs((path,), ())
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = tuple(sorted(path.glob(f"*{NIFTI_SUFFIX}")))
    if files:
        return Inputs(files, ())
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if len(series) == 1:
        return Inputs((), ((path.name, path),))
    if not series:
        raise FileNotFoundError(f"{path}: neither {NIFTI_SUFFIX} images nor a DICOM series")
    raise ValueError(f"{path}: {len(series)} DICOM series in one folder; give a folder per series")


def read_dicom_series(folder: Path) -> sitk.Image:
    """The one DICOM series of ``folder`` as a 3D image (slices ordered by position, as GDCM sorts them)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise ImageFileError(f"{folder}: the DICOM series cannot be read ({str(err).strip().splitlines()[-1]})") from None


def class_ids_of(names: list[str] | None) -> list[int] | None:
    """v1 ids of class names; ValueError listing the unknown ones."""
    if names is None:
        return None
    known = set(classes.class_names())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown class name(s) {', '.join(unknown)}; the v1 names are in totalseg_train/data/classes_v1.csv "
                         "(e.g. liver, spleen, vertebrae_L1)")
    return sorted({classes.id_of(n) for n in names})


def _check_settings(output: Path, settings: dict, overwrite: bool) -> None:
    recorded = output / SETTINGS_FILE
    if recorded.is_file() and not overwrite and json.loads(recorded.read_text()) != settings:
        raise ValueError(f"{output} holds predictions made with other settings ({recorded}); use another output "
                         "folder, or overwrite=true to predict every image again")


def run(cfg: DictConfig) -> list[Path]:
    """Predict every input; returns the label maps (or mask folders) written or found done."""
    trained = read_model_manifest(cfg.model)
    trained.require_trained()
    class_ids = class_ids_of(list(cfg.classes) if cfg.classes is not None else None)
    inputs = find_inputs(cfg.input)
    output = Path(cfg.output)
    settings = {"model": str(trained.directory.resolve()), "trained_ns": trained.trained_ns(),
                "classes": class_ids, "masks": bool(cfg.masks)}
    _check_settings(output, settings, bool(cfg.overwrite))
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    kept = class_ids if class_ids is not None else trained.class_ids()
    done = {sid: (output / sid if cfg.masks else nifti_path(output, sid)) for sid in inputs.subject_ids}
    todo = [sid for sid, path in done.items() if cfg.overwrite or not path.exists()]
    log.info("%s: %d image(s), %d done before; %s", trained.experiment, len(done), len(done) - len(todo),
             f"{len(kept)} classes" + (" as masks" if cfg.masks else ""))
    # Converted DICOM series and per-class masks' label maps: outside ``output``, whose stale temporaries the
    # engine removes when it starts.
    with tempfile.TemporaryDirectory(prefix="totalseg-predict-") as scratch:
        work = Path(scratch)
        images = [p for p in inputs.nifti if subject_id_of(p) in todo]
        for sid, folder in inputs.dicom:
            if sid in todo:
                images.append(nifti_path(work / "images", sid))
                write_image(read_dicom_series(folder), images[-1])
        if images:
            labels_dir = work / "labels" if cfg.masks else output
            labels = predict(trained.directory, images, labels_dir, device=cfg.device, workers=cfg.workers,
                             overwrite=bool(cfg.overwrite), progress=bool(cfg.progress), threads=cfg.torch_threads,
                             verbose=bool(cfg.verbose), class_ids=class_ids)
            if cfg.masks:
                for sid, label_file in labels.items():
                    write_masks(label_file, kept, output / sid)
    write_text(output / SETTINGS_FILE, json.dumps(settings, indent=1))
    log.info("wrote %s", output)
    return [done[sid] for sid in sorted(done)]


@hydra.main(config_path=CONFIG_PATH, config_name="predict", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (FileNotFoundError, ValueError, UntrainedModel) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

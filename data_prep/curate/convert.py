"""DICOM series -> NIfTI with SimpleITK: slice order from the scan, geometry from the headers, HU, int16.

Only voxels and geometry are copied into the new image: no DICOM attribute reaches the NIfTI header.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from totalseg_train.atomic import write_text
from totalseg_train.images import write_image


def read_series(paths: list[str]) -> sitk.Image:
    """Read DICOM files (already in slice order) as a float32 HU volume (rescale slope/intercept applied)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    return reader.Execute()


def to_int16_hu(hu: np.ndarray, min_hu: float, max_hu: float) -> np.ndarray:
    """Round and clip HU values into int16."""
    return np.clip(np.rint(hu), min_hu, max_hu).astype(np.int16)


def clean_image(image: sitk.Image, min_hu: float, max_hu: float, orientation: str | None) -> sitk.Image:
    """A new int16 image holding only the voxels and geometry of ``image``, reoriented to ``orientation``."""
    out = sitk.GetImageFromArray(to_int16_hu(sitk.GetArrayViewFromImage(image), min_hu, max_hu))
    out.CopyInformation(image)
    return sitk.DICOMOrient(out, orientation) if orientation else out


def geometry_record(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
            "direction": list(image.GetDirection())}


def convert_series(root: str, rel_paths: list[str], image_path: str, provenance_path: str, subject_id: str,
                   content_hash: str, orientation: str | None, min_hu: float, max_hu: float) -> dict:
    """Convert one series and record what was done (worker task); returns the provenance record."""
    start = time.perf_counter()
    image = clean_image(read_series([os.path.join(root, p) for p in rel_paths]), min_hu, max_hu, orientation)
    write_image(image, image_path)
    hu = sitk.GetArrayViewFromImage(image)
    record = {
        "subject_id": subject_id,
        "content_hash": content_hash,
        "n_slices": len(rel_paths),
        "orientation": orientation or "scan order",
        **geometry_record(image),
        "hu_min": int(hu.min()),
        "hu_max": int(hu.max()),
        "seconds": round(time.perf_counter() - start, 3),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "simpleitk": sitk.Version_VersionString(),
    }
    # Written after the image: an image without its provenance is converted again by the next run.
    write_text(provenance_path, json.dumps(record, indent=1))
    return record


def is_current(image_path: Path, provenance_path: Path, content_hash: str) -> bool:
    """True when the image exists and was converted from exactly this series content."""
    if not (image_path.exists() and provenance_path.exists()):
        return False
    try:
        return json.loads(provenance_path.read_text()).get("content_hash") == content_hash
    except (OSError, json.JSONDecodeError):
        return False

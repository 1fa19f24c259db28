"""Writing the phantom's volumes as DICOM series with realistic (and identifying) headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid

from totalseg_train.atomic import atomic_path

RESCALE_INTERCEPT = -1024.0


def uid(*parts) -> str:
    """A deterministic UID derived from ``parts`` (same seed, same UIDs)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_series(
    out_dir: str | Path,
    pixels: np.ndarray,
    positions: np.ndarray,
    orientation: tuple[float, ...],
    pixel_spacing: tuple[float, float],
    header: dict,
    sop_seed: str,
) -> int:
    """Write one DICOM file per slice of ``pixels`` [slice, row, col] (HU for CT); returns the count.

    ``positions`` holds the ImagePositionPatient of every slice; ``header`` the series-level
    attributes. The series folder appears only when complete.
    """
    modality = header["Modality"]
    ds = Dataset()
    for key, value in header.items():
        setattr(ds, key, value)
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{pixel_spacing[0]:.6f}", f"{pixel_spacing[1]:.6f}"]
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{RESCALE_INTERCEPT:g}", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        stored = np.clip(pixels.astype(np.int32) - int(RESCALE_INTERCEPT), 0, 4095).astype(np.uint16)
    else:
        stored = np.clip(pixels, 0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    normal = np.cross(orientation[:3], orientation[3:])
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for i in range(pixels.shape[0]):
            sop = uid(sop_seed, i)
            meta.MediaStorageSOPInstanceUID = sop
            ds.SOPInstanceUID = sop
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [f"{v:.4f}" for v in positions[i]]
            ds.SliceLocation = f"{float(np.dot(positions[i], normal)):.4f}"
            ds.PixelData = stored[i].tobytes()
            ds.save_as(tmp / f"IM{i + 1:05d}.dcm", enforce_file_format=True)
    return int(pixels.shape[0])

"""Reading and writing NIfTI volumes with SimpleITK: every read checked for a cut-off file, every write atomic.

SimpleITK reads a NIfTI file whose data was cut off (a half-finished copy, a full disk) without an
error: the missing voxels come back as zeros; so do NaN and infinite voxels of a float file. Every
stage therefore reads images through ``read_image``, which first compares the data the header
promises with what the file holds and looks for non-finite values in float files.

Every stage names a subject's file ``<subject_id>.nii.gz`` (``nifti_path``, ``subject_id_of``).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from totalseg_train.atomic import atomic_path, no_space

NIFTI_SUFFIX = ".nii.gz"  # every subject's image and label file; also nnU-Net's file_ending
NIFTI_SUFFIXES = (NIFTI_SUFFIX, ".nii")  # files whose completeness is checked on every read
_CHUNK = 1 << 22


class ImageFileError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


def nifti_path(folder: str | Path, subject_id: str) -> Path:
    """A subject's file in a folder: ``<folder>/<subject_id>.nii.gz``."""
    return Path(folder) / f"{subject_id}{NIFTI_SUFFIX}"


def subject_id_of(path: str | Path) -> str:
    """The subject id of a ``<subject_id>.nii.gz`` file; ValueError naming any other file."""
    name = Path(path).name
    if not name.endswith(NIFTI_SUFFIX) or name == NIFTI_SUFFIX:
        raise ValueError(f"{path}: expected a <subject_id>{NIFTI_SUFFIX} file")
    return name[: -len(NIFTI_SUFFIX)]


def _expected_nifti_bytes(path: Path) -> int:
    """Bytes of the uncompressed file that the header promises: data offset + voxels x bytes per voxel."""
    try:
        image = nib.load(str(path))
        shape = image.header.get_data_shape()
        itemsize = image.header.get_data_dtype().itemsize
        offset = int(image.dataobj.offset)  # where the voxels start (the header's vox_offset is reset on load)
    except Exception as err:  # nibabel raises many types for a broken header
        raise ImageFileError(f"{path}: not a readable NIfTI header ({type(err).__name__}: {err})") from None
    return offset + int(np.prod(shape, dtype=np.int64)) * itemsize


def _gzip_payload_bytes(path: Path) -> tuple[int, bool]:
    """(decompressed bytes, whether the last gzip member ended properly); zlib checks each member's CRC."""
    total, ended = 0, False
    stream = zlib.decompressobj(wbits=47)  # 32 + 15: a gzip header; CRC and length checked at the end
    with open(path, "rb") as fh:
        data = fh.read(_CHUNK)
        while data:
            try:
                total += len(stream.decompress(data))
            except zlib.error as err:
                raise ImageFileError(f"{path}: corrupt gzip data after {total} decompressed bytes ({err})") from None
            ended = stream.eof
            if ended:  # another gzip member may follow
                data = stream.unused_data or fh.read(_CHUNK)
                stream = zlib.decompressobj(wbits=47)
            else:
                data = fh.read(_CHUNK)
    return total, ended


def check_nifti_complete(path: str | Path, verify_data: bool = False) -> None:
    """ImageFileError when a NIfTI file holds less data than its header promises (cut off) or its gzip
    stream is broken.

    A complete gzip file ends with the length of its data, which must equal what the header promises;
    only when it does not (a cut file, or several gzip members) is the stream decompressed. That finds
    every cut-off file at the cost of reading 4 bytes. ``verify_data`` also decompresses a matching file
    to check its CRC (bytes flipped inside the stream), at about 70 % of the cost of reading the image.
    """
    path = Path(path)
    expected = _expected_nifti_bytes(path)
    if path.name.endswith(".gz"):
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            if fh.tell() < 18:
                raise ImageFileError(f"{path}: cut off ({fh.tell()} bytes, not even a gzip header and trailer)")
            fh.seek(-4, 2)
            (stored_length,) = struct.unpack("<I", fh.read(4))
        if stored_length == expected % (1 << 32) and not verify_data:
            return
        held, ended = _gzip_payload_bytes(path)
        if not ended:
            raise ImageFileError(f"{path}: cut off: the gzip stream stops after {held} of the {expected} bytes "
                                 "its header promises (an interrupted copy?)")
        if held < expected:
            raise ImageFileError(f"{path}: cut off: holds {held} of the {expected} bytes its header promises")
        return
    held = path.stat().st_size
    if held < expected:
        raise ImageFileError(f"{path}: cut off: holds {held} of the {expected} bytes its header promises")


def check_nifti_finite(path: str | Path) -> None:
    """ImageFileError when a float NIfTI file holds NaN or infinity, which SimpleITK reads as 0.

    Integer files cannot hold them and are not read; a float file is read once more with nibabel.
    """
    path = Path(path)
    image = nib.load(str(path))
    if image.header.get_data_dtype().kind not in "fc":
        return
    try:
        voxels = image.dataobj.get_unscaled()
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise ImageFileError(f"{path}: cannot read the voxels ({type(err).__name__}: {err})") from None
    nonfinite = int(np.count_nonzero(~np.isfinite(voxels)))
    if nonfinite:
        raise ImageFileError(f"{path}: NaN or infinity in {nonfinite} of {voxels.size} voxels")


def read_image(path: str | Path, pixel_type: int = sitk.sitkUnknown, verify_data: bool = False) -> sitk.Image:
    """Read an image with SimpleITK after checking that a NIfTI file is complete and, if float, finite.

    ImageFileError, naming the file and the problem, for a missing, cut-off, non-finite or unreadable
    file. ``verify_data``: also check the gzip CRC (see ``check_nifti_complete``); for files that are
    about to become permanent, such as an annotator's correction.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: no such file")
    if path.name.endswith(NIFTI_SUFFIXES):
        check_nifti_complete(path, verify_data)
        check_nifti_finite(path)
    try:
        return sitk.ReadImage(str(path), pixel_type)
    except RuntimeError as err:
        raise ImageFileError(f"{path}: cannot read the image ({_last_line(err)})") from None


def _last_line(err: RuntimeError) -> str:
    """SimpleITK's error text ends with the reason, after lines of source locations."""
    return str(err).strip().splitlines()[-1]


class _PinnedVoxels:
    """Exposes an image's voxel buffer to NumPy and keeps the image alive: an array made from it holds this
    object as its base (a bare ``GetArrayViewFromImage`` view dangles once its image is freed)."""

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def voxel_view(image: sitk.Image) -> np.ndarray:
    """A read-only (z, y, x) view of ``image``'s voxels, without a copy, valid for as long as the view lives."""
    return np.asarray(_PinnedVoxels(image))


def write_image(image: sitk.Image, path: str | Path) -> None:
    """Write atomically; WriteError naming the file when it could not be written whole (SimpleITK does not
    report a full disk: it leaves a cut-off file, found here by its missing gzip trailer)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        try:
            check_nifti_complete(tmp)
        except ImageFileError as err:
            raise no_space(path, f"written incompletely, {str(err).removeprefix(f'{tmp}: ')}") from None


def image_from_array(
    array_zyx: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    origin_xyz: tuple[float, float, float],
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetOrigin([float(o) for o in origin_xyz])
    image.SetDirection([float(d) for d in direction])
    return image


@dataclass(frozen=True)
class Geometry:
    """Size, spacing, origin and direction of an image: what two label maps must share to be compared."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of_image(cls, image: sitk.Image) -> "Geometry":
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def of_file(cls, path: str | Path) -> "Geometry":
        """Read from the header without loading the voxels; ImageFileError for a missing, cut-off or
        unreadable file (a NIfTI file's completeness costs reading its last 4 bytes)."""
        path = Path(path)
        if not path.is_file():
            raise ImageFileError(f"{path}: no such file")
        if path.name.endswith(NIFTI_SUFFIXES):
            check_nifti_complete(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise ImageFileError(f"{path}: cannot read the image header ({_last_line(err)})") from None
        return cls(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())

    def matches(self, other: "Geometry", tol: float = 1e-3) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def describe(self) -> str:
        spacing = ", ".join(f"{v:.3g}" for v in self.spacing)
        origin = ", ".join(f"{v:.1f}" for v in self.origin)
        return f"size {self.size}, spacing ({spacing}), origin ({origin})"


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return Geometry.of_image(a).matches(Geometry.of_image(b), tol)

"""Header-only scan of a folder tree: one record per DICOM image file, one problem row per other file.

Only the header is parsed (pydicom stops before the pixel data); the pixel data element is then
checked for presence and length without being read, so truncated files are found here and not
during conversion. Identifying values that curation needs only to derive other facts (birth date,
accession number, study date) are used inside the worker and never leave it.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from data_prep.curate.scan_cache import HeaderCache, file_states
from data_prep.curate.header import PIXEL_DATA, Header, NotDicom, Truncated, Unsupported, read_pydicom, read_raw

# Columns of a file record, in the order read_header returns them.
FILE_COLUMNS = (
    "path", "size", "patient_id", "sex", "age", "study_year", "study_key", "study_uid", "series_key", "series_uid",
    "sop_uid", "frame_uid", "modality", "image_type", "study_description", "series_description", "protocol_name",
    "series_number", "instance_number", "manufacturer", "model", "institution", "kvp", "kernel", "slice_thickness",
    "contrast_agent", "body_part", "gantry_tilt", "ipp_x", "ipp_y", "ipp_z", "iop_0", "iop_1", "iop_2", "iop_3",
    "iop_4", "iop_5", "pixel_spacing_row", "pixel_spacing_col", "rows", "columns", "frames", "transfer_syntax",
)
PROBLEM_COLUMNS = ("path", "problem", "detail")

KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "AccessionNumber", "StudyDate",
    "StudyTime", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
    "FrameOfReferenceUID", "Modality", "ImageType", "StudyDescription", "SeriesDescription", "ProtocolName",
    "SeriesNumber", "InstanceNumber", "Manufacturer", "ManufacturerModelName", "InstitutionName",
    "InstitutionAddress", "KVP", "ConvolutionKernel", "SliceThickness", "ContrastBolusAgent", "BodyPartExamined",
    "GantryDetectorTilt", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
    "NumberOfFrames", "BitsAllocated", "SamplesPerPixel", "MediaStorageSOPClassUID",
)
TAG = {keyword: tag_for_keyword(keyword) for keyword in KEYWORDS}
WANTED = frozenset(TAG.values())
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
NAN = float("nan")


@dataclass
class ScanResult:
    files: pd.DataFrame      # one row per DICOM image file; holds PatientID: never write it outside the private folder
    problems: pd.DataFrame   # path (relative), problem code, detail
    n_files: int             # every file looked at
    seconds: float
    n_parsed: int = 0        # files parsed by this scan (the others came from the cache)
    states: pd.DataFrame | None = None    # with a cache: path, size, mtime_ns of every file
    withheld: pd.DataFrame | None = None  # with a cache: unchanged files of series without consent (hashes only)


class FileProblem(Exception):
    """A file that is not a usable DICOM image; ``code`` is one of not_dicom, unreadable, truncated, not_an_image."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code


def list_files(root: str | Path, follow_symlinks: bool = True, skip_hidden: bool = True) -> list[str]:
    """Every file under ``root`` as a path relative to it, sorted; linked folders are visited once."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: DICOM folder not found (set dataset.dicom_root)")
    seen: set[tuple[int, int]] = set()
    out: list[str] = []
    for folder, dirs, names in os.walk(root, followlinks=follow_symlinks):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        if skip_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            names = [n for n in names if not n.startswith(".")]
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel + os.sep
        out.extend(prefix + n for n in names)
    out.sort()
    return out


@contextmanager
def _lenient_pydicom() -> Iterator[None]:
    # Real archives hold values that break the standard's VR rules; read them as they are.
    previous = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        pydicom_config.settings.reading_validation_mode = previous


def _dicom_date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, IndexError):
        return None


def _age_years(age_text: str, birth: str, study: str) -> float:
    """PatientAge ('045Y', '006M') in years, else from birth and study dates."""
    if len(age_text) == 4 and age_text[:3].isdigit():
        n, unit = int(age_text[:3]), age_text[3].upper()
        return {"Y": float(n), "M": n // 12, "W": n // 52, "D": n // 365}.get(unit, NAN)
    b, s = _dicom_date(birth), _dicom_date(study)
    if b is None or s is None:
        return NAN
    return float(s.year - b.year - ((s.month, s.day) < (b.month, b.day)))


def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` without any of ``secrets`` (case-insensitive): descriptions typed by hand can hold a name."""
    for secret in secrets:
        if secret.lower() in text.lower():
            text = re.sub(re.escape(secret), "[removed]", text, flags=re.IGNORECASE)
    return text


def _identifiers(h: Header) -> list[str]:
    """The patient's identifying strings (name parts, ids, birth date) worth searching for in free text."""
    name = re.split(r"[\\^=,\s]+", h.text(TAG["PatientName"]))
    values = [*name, h.text(TAG["PatientID"]), h.text(TAG["AccessionNumber"]), h.text(TAG["PatientBirthDate"])]
    return sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)


def _fallback_key(kind: str, *parts) -> str:
    digest = hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]
    return f"{kind}:{digest}"


def _check_pixel_data(fp, size: int, transfer_syntax: str, expected_bytes: int) -> None:
    """The file position is at the pixel data element (or the end): check it is there and complete."""
    pos = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        raise FileProblem("not_an_image", "no pixel data")
    little = transfer_syntax != _BIG_ENDIAN
    group, element = struct.unpack("<HH" if little else ">HH", head[:4])
    if (group << 16 | element) != PIXEL_DATA:
        raise FileProblem("not_an_image", "no pixel data")
    if transfer_syntax == _IMPLICIT_LITTLE:
        length, header = struct.unpack("<I", head[4:8])[0], 8
    else:
        if len(head) < 12:
            raise FileProblem("truncated", "pixel data element cut off")
        length, header = struct.unpack("<I" if little else ">I", head[8:12])[0], 12
    available = size - pos - header
    if length == 0xFFFFFFFF:
        _check_fragments(fp, size, little)
    elif length > available:
        raise FileProblem("truncated", f"pixel data holds {max(available, 0)} of {length} bytes")
    elif expected_bytes and length < expected_bytes:
        raise FileProblem("truncated", f"pixel data holds {length} bytes, the image needs {expected_bytes}")


def _check_fragments(fp, size: int, little: bool) -> None:
    """Encapsulated (compressed) pixel data: every item must fit in the file, and the sequence must end."""
    layout = "<HHI" if little else ">HHI"
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise FileProblem("truncated", "compressed pixel data cut off (no sequence delimiter)")
        group, element, length = struct.unpack(layout, head)
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000):
            raise FileProblem("unreadable", f"unexpected element ({group:04X},{element:04X}) in compressed pixel data")
        if fp.tell() + length > size:
            raise FileProblem("truncated", f"compressed pixel data fragment of {length} bytes cut off")
        fp.seek(length, os.SEEK_CUR)


def _read(fp, fast: bool) -> Header:
    """The wanted attributes through the fast walker, or pydicom for what the walker leaves to it."""
    if fast:
        try:
            return read_raw(fp, WANTED)
        except NotDicom as exc:
            raise FileProblem("not_dicom", str(exc)) from exc
        except Truncated as exc:
            raise FileProblem("truncated", str(exc)) from exc
        except Unsupported:
            pass
    try:
        return read_pydicom(fp)
    except InvalidDicomError as exc:
        raise FileProblem("not_dicom", "no DICOM preamble / DICM prefix") from exc


def read_header(root: str, rel: str, fast: bool = True) -> tuple:
    """One file record (FILE_COLUMNS order); raises FileProblem for anything that is not a usable image.

    ``fast=False`` reads every file through pydicom (the reference the fast walker is tested against).
    """
    path = os.path.join(root, rel)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            h = _read(fp, fast)
            if not (h.has(TAG["SOPClassUID"]) or h.has(TAG["Modality"])):
                raise FileProblem("unreadable", "neither SOPClassUID nor Modality: not a readable DICOM dataset")
            rows, columns = h.number(TAG["Rows"]), h.number(TAG["Columns"])
            frames = h.number(TAG["NumberOfFrames"])
            frames = 1.0 if frames != frames else frames
            bits, samples = h.number(TAG["BitsAllocated"]), h.number(TAG["SamplesPerPixel"])
            expected = 0
            if rows == rows and columns == columns and bits == bits:
                expected = int(rows * columns * frames * (1 if samples != samples else samples) * bits) // 8
            if h.pixel_data_at is None:
                sop_class = UID(h.text(TAG["MediaStorageSOPClassUID"]) or h.text(TAG["SOPClassUID"]))
                if "Image Storage" in sop_class.name:
                    raise FileProblem("truncated", f"{sop_class.name} object without pixel data (file cut off)")
                raise FileProblem("not_an_image", f"no pixel data ({sop_class.name or 'unknown SOP class'})")
            fp.seek(h.pixel_data_at)
            _check_pixel_data(fp, size, h.transfer_syntax, expected)
    except FileProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure means "unreadable", never a stopped run
        raise FileProblem("unreadable", f"{type(exc).__name__}: {exc}") from exc
    if rows != rows or columns != columns:
        raise FileProblem("not_an_image", "no Rows / Columns")
    return _record(h, rel, size, rows, columns, frames)


def _record(h: Header, rel: str, size: int, rows: float, columns: float, frames: float) -> tuple:
    text, number = h.text, h.number
    patient_id = text(TAG["PatientID"])
    study_date = text(TAG["StudyDate"])
    study_uid, series_uid = text(TAG["StudyInstanceUID"]), text(TAG["SeriesInstanceUID"])
    frame_uid = text(TAG["FrameOfReferenceUID"])
    modality = text(TAG["Modality"]).upper()
    series_number = number(TAG["SeriesNumber"])
    series_description = text(TAG["SeriesDescription"])
    kernel = text(TAG["ConvolutionKernel"]).split("\\")[0]
    thickness = number(TAG["SliceThickness"])
    iop = tuple(number(TAG["ImageOrientationPatient"], i) for i in range(6))
    # Anonymised exports may blank the UIDs: fall back on attributes that stay fixed within a study / series.
    study_key = study_uid or _fallback_key(
        "study", patient_id, study_date, text(TAG["StudyTime"]), text(TAG["StudyID"]), text(TAG["AccessionNumber"]))
    series_key = series_uid or _fallback_key(
        "series", study_key, series_number, series_description, modality, frame_uid, kernel, thickness,
        tuple(round(v, 4) for v in iop), rows, columns, os.path.dirname(rel))
    institution = text(TAG["InstitutionName"]) or text(TAG["InstitutionAddress"])
    study = _dicom_date(study_date)
    secrets = _identifiers(h)
    return (
        rel, size, patient_id, text(TAG["PatientSex"]).upper(),
        _age_years(text(TAG["PatientAge"]), text(TAG["PatientBirthDate"]), study_date),
        float(study.year) if study else NAN, study_key, study_uid, series_key, series_uid,
        text(TAG["SOPInstanceUID"]), frame_uid, modality, text(TAG["ImageType"]).upper(),
        _scrub(text(TAG["StudyDescription"]), secrets), _scrub(series_description, secrets),
        _scrub(text(TAG["ProtocolName"]), secrets), series_number, number(TAG["InstanceNumber"]),
        text(TAG["Manufacturer"]), text(TAG["ManufacturerModelName"]), institution, number(TAG["KVP"]), kernel,
        thickness, text(TAG["ContrastBolusAgent"]), text(TAG["BodyPartExamined"]).upper(),
        number(TAG["GantryDetectorTilt"]), *(number(TAG["ImagePositionPatient"], i) for i in range(3)), *iop,
        number(TAG["PixelSpacing"], 0), number(TAG["PixelSpacing"], 1), rows, columns, frames, h.transfer_syntax,
    )


def scan_chunk(root: str, rels: list[str], fast: bool = True) -> tuple[list[tuple], list[tuple]]:
    """Records and problems of a list of files (one worker task)."""
    records, problems = [], []
    with _lenient_pydicom():
        for rel in rels:
            try:
                records.append(read_header(root, rel, fast))
            except FileProblem as problem:
                problems.append((rel, problem.code, str(problem)))
    return records, problems


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def scan_tree(root: str | Path, workers: int = 2, files_per_task: int = 512, follow_symlinks: bool = True,
              skip_hidden: bool = True, progress: bool = True, fast: bool = True,
              cache: HeaderCache | None = None) -> ScanResult:
    """Parse the header of every file under ``root`` in ``workers`` processes; with a ``cache``, only of the
    files it does not answer for (new, changed, or of a patient who has consented since)."""
    start = time.perf_counter()
    root = str(Path(root).resolve())
    rels = list_files(root, follow_symlinks, skip_hidden)
    states = cached = None
    todo = rels
    if cache is not None:
        states = file_states(root, rels)
        cached = cache.lookup(states, list(FILE_COLUMNS), list(PROBLEM_COLUMNS))
        todo = cached.todo
    chunks = _chunks(todo, max(1, int(files_per_task)))
    records: list[tuple] = []
    problems: list[tuple] = []
    bar = tqdm(total=len(todo), desc="header scan", unit="file", disable=not progress, smoothing=0.1)
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            r, p = scan_chunk(root, chunk, fast)
            records += r
            problems += p
            bar.update(len(chunk))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for chunk, (r, p) in zip(chunks, pool.map(scan_chunk, [root] * len(chunks), chunks, [fast] * len(chunks))):
                records += r
                problems += p
                bar.update(len(chunk))
    bar.close()
    files = pd.DataFrame.from_records(records, columns=list(FILE_COLUMNS))
    problem_table = pd.DataFrame.from_records(problems, columns=list(PROBLEM_COLUMNS))
    if cached is not None:
        files = _with_cached(cached.records, files)
        problem_table = _with_cached(cached.problems, problem_table)
    return ScanResult(files, problem_table, len(rels), time.perf_counter() - start, len(todo), states,
                      None if cached is None else cached.withheld)


def _with_cached(cached: pd.DataFrame, parsed: pd.DataFrame) -> pd.DataFrame:
    """Cached and newly parsed rows in path order, as one scan of every file gives them."""
    if not len(cached):
        return parsed
    if not len(parsed):
        return cached.sort_values("path", ignore_index=True)
    return pd.concat([cached, parsed], ignore_index=True).sort_values("path", ignore_index=True)

"""The search of the data-protection audit: identifying values of a DICOM input, and every file of a folder searched
for them and for withdrawn subjects (``python -m data_prep.audit`` over a workspace; the release over itself).

The identifying values come from the input itself: every series folder's DICOM header (names and their parts,
PatientID, birth date, accession number, institution and its address, the study and series UIDs), of every patient,
consenting or not, plus the original UIDs in the private key. Every file is searched as far as its format lets
text hide: NIfTI headers and extensions (gzip or not), other gzip files decompressed, Parquet tables as text, PNG
text chunks (compressed ones too), and the raw bytes of everything else (CSV, JSON, pickles, nnU-Net plans, logs,
wandb runs, checkpoints). Files named for a subject whose patient withdrew consent, and table rows naming one,
are findings too. A finding names the file and the kind of value, never the value.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pydicom

from totalseg_train.subject_traces import read_any_table, rows_naming, subject_in_name

IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "InstitutionAddress", "ReferringPhysicianName", "StudyInstanceUID", "SeriesInstanceUID")
KEY_UIDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")  # the private key's identifying columns
MIN_PART = 4          # shorter name or address parts ("Li", "21") match too much to mean anything
CHUNK = 16 << 20      # raw bytes searched per step (with an overlap of the longest value)
MAX_HEADER = 64 << 20  # a NIfTI header claiming more is read up to this
SMALL_MEMBER = 1 << 20  # archive members up to this size are searched whatever their name


@dataclass(frozen=True)
class Finding:
    path: str
    kind: str  # the DICOM keyword of the value found, or "withdrawn subject"


def identifying_values(dicom_root: Path, key_csv: Path | None = None) -> dict[str, str]:
    """value -> kind for every identifying value of the input: one header per series folder, names and addresses
    also split into their parts; the original UIDs of the private key."""
    values: dict[str, str] = {}
    folders = {}
    for folder, _, names in os.walk(dicom_root):
        files = sorted(n for n in names if not n.startswith("."))
        if files:
            folders[folder] = files
    for folder, names in sorted(folders.items()):
        for name in names:  # the first readable DICOM file of the folder
            try:
                ds = pydicom.dcmread(Path(folder) / name, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not DICOM, or broken: curation lists those itself
                continue
            for keyword in IDENTIFYING:
                value = str(ds.get(keyword, "") or "").strip()
                if not value:
                    continue
                values.setdefault(value, keyword)
                if keyword in ("PatientName", "InstitutionAddress", "InstitutionName", "ReferringPhysicianName"):
                    for part in re.split(r"[\^,=]\s*", value):
                        if len(part.strip()) >= MIN_PART:
                            values.setdefault(part.strip(), keyword)
            break
    if key_csv is not None and key_csv.is_file():
        key = pd.read_csv(key_csv, dtype=str, keep_default_na=False)
        for column in KEY_UIDS:
            for value in key.get(column, pd.Series(dtype=str)):
                if value:
                    values.setdefault(value, column)
    return values


def _nifti_header_size(head: bytes) -> int:
    """Bytes of header and extensions of a NIfTI-1/2 file (where text can be), from its first 544 bytes."""
    if len(head) >= 348 and struct.unpack("<i", head[:4])[0] == 348:
        return min(max(int(struct.unpack("<f", head[108:112])[0]), 352), MAX_HEADER)
    if len(head) >= 540 and struct.unpack("<i", head[:4])[0] == 540:
        return min(max(struct.unpack("<q", head[168:176])[0], 544), MAX_HEADER)
    return len(head)


def _png_text(raw: bytes) -> bytes:
    """The PNG's text chunks, decompressed where compressed (zTXt, compressed iTXt)."""
    out, pos = [], 8
    while pos + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        pos += 12 + length
        try:
            if kind == b"tEXt":
                out.append(body)
            elif kind == b"zTXt":
                keyword, _, rest = body.partition(b"\0")
                out += [keyword, zlib.decompress(rest[1:])]
            elif kind == b"iTXt":
                keyword, _, rest = body.partition(b"\0")
                compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
                out += [keyword, zlib.decompress(text) if compressed else text]
        except (zlib.error, IndexError):
            continue
    return b"\n".join(out)


def _chunks(f) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


def searchable(path: Path) -> Iterator[bytes]:
    """Where text can be in the file: the bytes of text-like files, and of the others what their format keeps as
    text (compressed or encoded text decoded; compressed voxels, pixels and tensors, whose bytes look random and
    would match short names by chance, left out)."""
    name = path.name
    if name.endswith((".nii.gz", ".nii")):
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
            head = f.read(544)
            yield head + f.read(max(0, _nifti_header_size(head) - len(head)))
        if name.endswith(".gz"):
            with open(path, "rb") as f:
                raw = f.read(10 + 1024)
            if raw[3] & 0x18:  # FNAME | FCOMMENT: text in the gzip header
                yield raw
        return
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            yield from _chunks(f)
        return
    if name.endswith(".parquet"):
        yield pd.read_parquet(path).to_csv(index=False).encode()
        return
    if name.endswith(".png"):
        yield _png_text(path.read_bytes())
        return
    if zipfile.is_zipfile(path):  # torch checkpoints, .npz: the pickled records, not the tensor data
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith((".pkl", ".json", ".txt")) or member.file_size <= SMALL_MEMBER:
                    yield archive.read(member)
        return
    if name.endswith((".b2nd", ".npy")):  # compressed or raw arrays: their metadata only
        with open(path, "rb") as f:
            yield f.read(4096)
        return
    with open(path, "rb") as f:
        yield from _chunks(f)


def search_file(path: Path, pattern: re.Pattern, kinds: dict[bytes, str], overlap: int) -> set[str]:
    """Kinds of the values found in one file."""
    found: set[str] = set()
    tail = b""
    for chunk in searchable(path):
        text = tail + chunk
        found.update(kinds[m.group()] for m in pattern.finditer(text))
        tail = text[-overlap:]
    return found


def withdrawn_findings(path: Path, withdrawn: set[str]) -> bool:
    """A file named for a withdrawn subject, or a table naming one."""
    if subject_in_name(path.name, withdrawn):
        return True
    table = read_any_table(path) if path.suffix in (".csv", ".parquet") else None
    return table is not None and bool(rows_naming(table, withdrawn).any())


def audit(workspace: Path, values: dict[str, str], skip: list[Path], withdrawn: set[str],
          withdrawn_skip: list[Path]) -> list[Finding]:
    """Every (file, kind) found under ``workspace`` outside ``skip``."""
    ordered = sorted(values, key=len, reverse=True)
    kinds = {v.encode(): values[v] for v in ordered}
    pattern = re.compile(b"|".join(re.escape(v.encode()) for v in ordered)) if ordered else None
    overlap = max((len(v.encode()) for v in ordered), default=1)
    skipped = {p.resolve() for p in skip}
    findings: list[Finding] = []
    for folder, dirs, names in os.walk(workspace):
        here = Path(folder).resolve()
        dirs[:] = sorted(d for d in dirs if (here / d) not in skipped)
        for name in sorted(names):
            path = here / name
            if path in skipped or path.is_symlink():
                continue
            if pattern is not None:
                try:
                    found = search_file(path, pattern, kinds, overlap)
                except (OSError, EOFError, ValueError, zlib.error) as err:
                    findings.append(Finding(str(path), f"unreadable ({type(err).__name__}): not searched"))
                    continue
                findings += [Finding(str(path), kind) for kind in sorted(found)]
            if withdrawn and not any(path.is_relative_to(p) for p in withdrawn_skip) and \
                    withdrawn_findings(path, withdrawn):
                findings.append(Finding(str(path), "withdrawn subject"))
    return findings

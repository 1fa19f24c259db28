"""python -m data_prep.curate.robustness (part of make robustness): seeded fuzzing of curation with broken DICOM.

Each input is the real 20-slice example series with one slice broken in one way (cut off, bits flipped, its
position or orientation or pixel spacing missing or contradicting the others, its pixel data gone), curated by
the real stage in a workspace of its own. Every input must end with the broken file listed as unusable, the
series (or the broken slice, split off as a series of its own) excluded with a reason, or, where no check can
see the change (a flipped bit inside compressed pixels), converted; a crash of the stage is a defect. Counts
per kind and outcome, with one reason as example.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from data_prep.curate.pipeline import PROBLEMS_FILE, curate
from totalseg_train.config import compose_config
from totalseg_train.robustness import report

SERIES = Path(__file__).resolve().parents[3] / "shared" / "data" / "ct_example" / "example_ct_dicom"
PATIENT = "FUZZ-0001"
OUTCOMES = ("file_listed", "series_excluded", "converted", "crashed")
COLUMNS = ["kind", "tried", *OUTCOMES, "example"]


def _cut(rng: np.random.Generator, path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(rng.integers(1, len(data) - 1))])


def _flip(rng: np.random.Generator, path: Path) -> None:
    data = bytearray(path.read_bytes())
    for _ in range(int(rng.integers(1, 9))):
        position = int(rng.integers(132, len(data)))  # past the preamble and DICM prefix
        data[position] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))


def _edit(change: Callable[[np.random.Generator, pydicom.Dataset], None]) -> Callable[[np.random.Generator, Path], None]:
    def apply(rng: np.random.Generator, path: Path) -> None:
        ds = pydicom.dcmread(path)
        change(rng, ds)
        ds.save_as(path)
    return apply


def _drop_geometry(rng, ds) -> None:
    del ds[str(rng.choice(["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"]))]


def _tilt(rng, ds) -> None:
    angle = float(rng.uniform(0.05, 0.5))
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle))]


def _spacing(rng, ds) -> None:
    ds.PixelSpacing = [float(v) * float(rng.uniform(1.1, 2.0)) for v in ds.PixelSpacing]


def _no_pixels(rng, ds) -> None:
    del ds.PixelData


KINDS: dict[str, Callable[[np.random.Generator, Path], None]] = {
    "truncated": _cut, "bit_flipped": _flip, "geometry_missing": _edit(_drop_geometry),
    "orientation_contradicts": _edit(_tilt), "pixel_spacing_contradicts": _edit(_spacing),
    "pixel_data_missing": _edit(_no_pixels),
}


def _series_copy(folder: Path) -> list[Path]:
    """The example series with a PatientID (the consent gate looks patients up by it)."""
    target = folder / "dicom" / "series"
    target.mkdir(parents=True)
    files = []
    for path in sorted(SERIES.iterdir()):
        ds = pydicom.dcmread(path)
        ds.PatientID = PATIENT
        ds.save_as(target / path.name)
        files.append(target / path.name)
    (folder / "consent.csv").write_text(f"patient_id,research_consent\n{PATIENT},yes\n")
    return files


def curate_once(folder: Path) -> tuple[str, str]:
    cfg = compose_config("curate", [f"paths.workspace={folder / 'ws'}", f"dataset.dicom_root={folder / 'dicom'}",
                                    f"dataset.consent_csv={folder / 'consent.csv'}", "workers=1", "progress=false"])
    try:
        summary = curate(cfg)
    except Exception as err:  # noqa: BLE001 - what the fuzzing is for
        return "crashed", f"{type(err).__name__}: {err}"
    problems = Path(cfg.paths.private) / PROBLEMS_FILE
    listed = pd.read_csv(problems, dtype=str, keep_default_na=False) if problems.is_file() else pd.DataFrame()
    if len(listed):
        return "file_listed", f"{listed.iloc[0].get('problem', '')}: {listed.iloc[0].get('detail', '')}".strip(": ")
    excluded = summary.series[summary.series.decision != "included"]
    if len(excluded):  # the series, or the broken slice split off as a series of its own
        row = excluded.iloc[0]
        return "series_excluded", f"{row.reason}: {row.detail}"
    return "converted", ""


def fuzz(per_kind: int, seed: int) -> pd.DataFrame:
    rows = []
    for offset, (kind, breaks) in enumerate(KINDS.items()):
        rng = np.random.default_rng([seed, offset])
        counts, example = dict.fromkeys(OUTCOMES, 0), ""
        for _ in range(per_kind):
            with tempfile.TemporaryDirectory(prefix="fuzz_dicom_") as tmp:
                files = _series_copy(Path(tmp))
                breaks(rng, files[int(rng.integers(0, len(files)))])
                outcome, reason = curate_once(Path(tmp))
            counts[outcome] += 1
            if reason and (outcome == "crashed" or not example):
                example = reason[:160]
        rows.append({"kind": kind, "tried": per_kind, **counts, "example": example})
    return pd.DataFrame(rows, columns=COLUMNS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=20, help="broken series curated per kind (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this CSV")
    args = parser.parse_args(argv)
    if not SERIES.is_dir():
        sys.exit(f"error: {SERIES} not found (the shared example series)")
    table = fuzz(args.per_kind, args.seed)
    return report(table, table, f"{int(table.tried.sum())} broken series curated: {int(table.file_listed.sum())} "
                  f"with the file listed, {int(table.series_excluded.sum())} excluded with a reason, "
                  f"{int(table.converted.sum())} converted, {int(table.crashed.sum())} crashed", args.out)


if __name__ == "__main__":
    sys.exit(main())

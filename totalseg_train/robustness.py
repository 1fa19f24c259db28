"""python -m totalseg_train.robustness (part of make robustness): seeded fuzzing of the one NIfTI reader.

From a real label map and CT (the shared example, or any pair given), a seeded generator makes broken inputs of
each kind and hands each to the reader a stage uses for it: label maps to ``read_label_map`` with the CRC checked
(the policy for files that become permanent: ingest) and without (export, QA, evaluation), images with their
label map to the statistics' subject reader (grid, HU and finiteness checks). Every input must end in an error
that names the file; anything else (a crash with another exception, or a broken file read as if it were fine) is
counted. Peak memory is measured over the whole run: a header claiming a huge volume must not be allocated.
"""

from __future__ import annotations

import argparse
import resource
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from totalseg_train.images import Geometry, ImageFileError
from totalseg_train.label_maps import read_label_map
from totalseg_train.statistics.inputs import HuCheck, StatisticsInputError, read_subject

SHARED_EXAMPLE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ct_example"
OUTCOMES = ("rejected", "accepted", "crashed")
COLUMNS = ["kind", "reader", "tried", "rejected", "accepted", "crashed", "example"]


def _write(array: np.ndarray, like: sitk.Image, path: Path, compress: bool = True) -> Path:
    image = sitk.GetImageFromArray(array)
    if image.GetSize() == like.GetSize():
        image.CopyInformation(like)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def _labels_with(rng: np.random.Generator, labels: np.ndarray, dtype, values: np.ndarray) -> np.ndarray:
    out = labels.astype(dtype)
    where = rng.choice(out.size, size=min(len(values), out.size), replace=False)
    out.flat[where] = values[: len(where)]
    return out


# Each maker writes one broken input into ``folder`` from the real pair and returns the label and image paths.
Maker = Callable[[np.random.Generator, sitk.Image, sitk.Image, Path, Path, Path], tuple[Path, Path]]


def truncated(rng, labels, image, label_file, image_file, folder):
    data = label_file.read_bytes()
    cut = folder / "truncated.nii.gz"
    cut.write_bytes(data[: int(rng.integers(1, len(data) - 1))])
    return cut, image_file


def bit_flipped(rng, labels, image, label_file, image_file, folder):
    data = bytearray(label_file.read_bytes())
    for _ in range(int(rng.integers(1, 9))):
        position = int(rng.integers(10, len(data) - 8))  # inside the deflate stream, past the gzip header
        data[position] ^= 1 << int(rng.integers(0, 8))
    flipped = folder / "bit_flipped.nii.gz"
    flipped.write_bytes(bytes(data))
    return flipped, image_file


def non_finite(rng, labels, image, label_file, image_file, folder):
    array = sitk.GetArrayFromImage(labels)
    values = rng.choice([np.nan, np.inf, -np.inf], size=int(rng.integers(1, 50)))
    return _write(_labels_with(rng, array, np.float32, values), labels, folder / "non_finite.nii.gz"), image_file


def fractional_ids(rng, labels, image, label_file, image_file, folder):
    array = sitk.GetArrayFromImage(labels)
    values = rng.integers(1, 104, size=int(rng.integers(1, 50))) + rng.uniform(0.01, 0.99, size=1)
    return _write(_labels_with(rng, array, np.float32, values), labels, folder / "fractional.nii.gz"), image_file


def negative_ids(rng, labels, image, label_file, image_file, folder):
    array = sitk.GetArrayFromImage(labels)
    values = -rng.integers(1, 1000, size=int(rng.integers(1, 50)))
    return _write(_labels_with(rng, array, np.int16, values), labels, folder / "negative.nii.gz"), image_file


def out_of_range_ids(rng, labels, image, label_file, image_file, folder):
    array = sitk.GetArrayFromImage(labels)
    values = rng.integers(105, 256, size=int(rng.integers(1, 50)))
    return _write(_labels_with(rng, array, np.uint8, values), labels, folder / "out_of_range.nii.gz"), image_file


def two_d(rng, labels, image, label_file, image_file, folder):
    array = sitk.GetArrayFromImage(labels)
    return _write(array[int(rng.integers(0, array.shape[0]))], labels, folder / "two_d.nii.gz"), image_file


def four_d(rng, labels, image, label_file, image_file, folder):
    path = folder / "four_d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([labels] * int(rng.integers(2, 4))), str(path), useCompression=True)
    return path, image_file


def huge_header(rng, labels, image, label_file, image_file, folder):
    """An uncompressed map whose header claims dimensions of tens of thousands of voxels per axis."""
    plain = folder / "huge.nii"
    sitk.WriteImage(labels, str(plain), useCompression=False)
    data = bytearray(plain.read_bytes())
    dims = [int(rng.integers(20_000, 32_000)) for _ in range(3)]  # int16 fields
    data[40:56] = struct.pack("<8h", 3, *dims, 1, 1, 1, 1)[:16]
    plain.write_bytes(bytes(data))
    return plain, image_file


def other_grid(rng, labels, image, label_file, image_file, folder):
    moved = sitk.Image(labels)
    origin = np.array(moved.GetOrigin()) + rng.uniform(2.0, 20.0, size=3)
    moved.SetOrigin(tuple(origin))
    path = folder / "other_grid.nii.gz"
    sitk.WriteImage(moved, str(path), useCompression=True)
    return path, image_file


def not_hu(rng, labels, image, label_file, image_file, folder):
    """The CT rescaled like an MR: positive intensities everywhere, air no longer near -1000."""
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    scaled = (hu - hu.min()) * float(rng.uniform(0.2, 2.0))
    return label_file, _write(scaled.astype(np.int16), image, folder / "mr_like.nii.gz")


def non_finite_image(rng, labels, image, label_file, image_file, folder):
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    values = rng.choice([np.nan, np.inf], size=int(rng.integers(1, 50)))
    return label_file, _write(_labels_with(rng, hu, np.float32, values), image, folder / "image_nan.nii.gz")


LABEL_KINDS: dict[str, Maker] = {
    "truncated": truncated, "bit_flipped": bit_flipped, "non_finite_ids": non_finite,
    "fractional_ids": fractional_ids, "negative_ids": negative_ids, "out_of_range_ids": out_of_range_ids,
    "two_d": two_d, "four_d": four_d, "huge_header": huge_header,
}
PAIR_KINDS: dict[str, Maker] = {"other_grid": other_grid, "not_hu": not_hu, "non_finite_image": non_finite_image}


def _outcome(read: Callable[[], object], named: Path) -> tuple[str, str]:
    try:
        read()
    except (ImageFileError, StatisticsInputError) as err:
        message = str(err)
        return ("rejected" if str(named) in message else "crashed"), message
    except Exception as err:  # noqa: BLE001 - what the fuzzing is for: any other exception is a defect
        return "crashed", f"{type(err).__name__}: {err}"
    return "accepted", ""


def fuzz(labels_path: Path, image_path: Path, per_kind: int, seed: int, labels_version: str = "v1") -> pd.DataFrame:
    """One row per kind and reader: inputs tried and their outcomes, with one rejection message as example."""
    labels = read_label_map(labels_path, labels_version=labels_version).image
    image = sitk.ReadImage(str(image_path))
    if not Geometry.of_image(image).matches(Geometry.of_image(labels)):
        raise ValueError(f"{image_path} does not lie on the grid of {labels_path}: give a matching pair")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fuzz_") as tmp:
        folder = Path(tmp)
        label_file = _write(sitk.GetArrayFromImage(labels).astype(np.uint8), labels, folder / "labels.nii.gz")
        image_file = _write(sitk.GetArrayFromImage(image), image, folder / "image.nii.gz")
        readers = {
            "read_label_map, CRC checked (ingest)": lambda l, i: read_label_map(l, verify_data=True),
            "read_label_map (export, QA, evaluation)": lambda l, i: read_label_map(l),
        }
        pair_reader = {"statistics' read_subject": lambda l, i: read_subject(l, i, HuCheck())}
        for kinds, chosen in ((LABEL_KINDS, readers), (PAIR_KINDS, pair_reader)):
            for offset, (kind, make) in enumerate(kinds.items()):
                counts = {name: dict.fromkeys(OUTCOMES, 0) for name in chosen}
                example = {name: "" for name in chosen}
                rng = np.random.default_rng([seed, offset, len(kinds)])
                for _ in range(per_kind):
                    label_in, image_in = make(rng, labels, image, label_file, image_file, folder)
                    named = image_in if label_in == label_file else label_in
                    for name, read in chosen.items():
                        outcome, message = _outcome(lambda: read(label_in, image_in), named)
                        counts[name][outcome] += 1
                        if outcome != "rejected" or not example[name]:
                            example[name] = message.replace(str(folder) + "/", "")[:160] or example[name]
                for name in chosen:
                    rows.append({"kind": kind, "reader": name, "tried": per_kind, **counts[name],
                                 "example": example[name]})
    return pd.DataFrame(rows, columns=COLUMNS)


def report(table: pd.DataFrame, shown: pd.DataFrame, summary: str, out: Path | None) -> int:
    """Print a fuzzing run's table and summary, write the table to ``out`` if given; exit status 1 on a crash."""
    with pd.option_context("display.max_colwidth", 90, "display.width", 200):
        print(shown.to_string(index=False))
    print(summary)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
    return 1 if table.crashed.sum() else 0


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=SHARED_EXAMPLE / "example_seg.nii.gz")
    parser.add_argument("--labels-version", default="v2", help="v1 or v2 (the shared example's map is v2)")
    parser.add_argument("--image", type=Path, default=SHARED_EXAMPLE / "example_ct_sm.nii.gz")
    parser.add_argument("--per-kind", type=int, default=20, help="inputs generated per kind (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this CSV")
    args = parser.parse_args(argv)
    before = peak_memory_mb()
    table = fuzz(args.labels, args.image, args.per_kind, args.seed, args.labels_version)
    grown = peak_memory_mb() - before
    return report(table, table.drop(columns="example"),
                  f"{int(table.tried.sum())} inputs read, {int(table.rejected.sum())} rejected naming the file, "
                  f"{int(table.accepted.sum())} accepted, {int(table.crashed.sum())} crashed; peak memory grew by "
                  f"{grown:.0f} MB", args.out)


if __name__ == "__main__":
    sys.exit(main())

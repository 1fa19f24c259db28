"""python -m data_prep.curate.bench: speed of the header scan and the conversion on a phantom cohort.

The reference is pydicom's bare loop, ``dcmread(f, stop_before_pixels=True)`` over the same files
in one process, timed in the same run. Each timing is the best of ``--repeats`` (files are in the
page cache after the first pass, for both alike). After the curation run, the scan of the unchanged
archive again, as the next curation does it: answered by the header cache (``scan.cache``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pydicom

from data_prep.curate.consent import consenting_patients, read_consent
from data_prep.curate.pipeline import curate
from data_prep.curate.scan import list_files, scan_tree
from data_prep.curate.scan_cache import HeaderCache
from totalseg_train.config import compose_config


def bare_pydicom_loop(root: Path, files: list[str]) -> float:
    """Seconds for pydicom's plain header loop over ``files``."""
    start = time.perf_counter()
    for rel in files:
        pydicom.dcmread(root / rel, stop_before_pixels=True)
    return time.perf_counter() - start


def ours(root: Path, workers: int, files_per_task: int, cache: HeaderCache | None = None) -> float:
    start = time.perf_counter()
    result = scan_tree(root, workers=workers, files_per_task=files_per_task, progress=False, cache=cache)
    assert cache is None or result.n_parsed == 0, "the archive changed between the scans"
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=16, help="phantom patients to generate (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="processes for our scan and conversion (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per method; the best counts (default 2)")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace holding (or to receive) raw/ of a phantom cohort; default: a temporary one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as tmp:
        workspace = (args.workspace or Path(tmp)).resolve()
        phantom = compose_config("phantom", [f"paths.workspace={workspace}", f"n_subjects={args.subjects}",
                                             f"workers={args.workers}"])
        from data_prep.phantom.cohort import generate_cohort

        generate_cohort(phantom, progress=True)
        root = Path(phantom.out) / "dicom"
        files = list_files(root)
        cfg = compose_config("curate", [f"paths.workspace={workspace}", f"workers={args.workers}", "progress=false"])
        reference = min(bare_pydicom_loop(root, files) for _ in range(args.repeats))
        scan = min(ours(root, args.workers, int(cfg.scan.files_per_task)) for _ in range(args.repeats))
        summary = curate(cfg)
        registry = read_consent(cfg.dataset.consent_csv, cfg.consent.patient_column, cfg.consent.consent_column)
        cache = HeaderCache(cfg.paths.private, consenting_patients(registry, cfg.consent.accepted))
        rescan = min(ours(root, args.workers, int(cfg.scan.files_per_task), cache) for _ in range(args.repeats))
        n = len(files)
        print(f"\nheader scan of {n} files ({args.subjects} phantom patients), {args.workers} worker processes")
        print(f"  pydicom dcmread(stop_before_pixels=True) loop: {n / reference:8.0f} files/s")
        print(f"  data_prep.curate scan (records, checks):       {n / scan:8.0f} files/s"
              f"   {reference / scan:.2f}x the pydicom loop   goal >= 2000 files/s: {'met' if n / scan >= 2000 else 'NOT met'}")
        print(f"  the same archive again, unchanged (header cache):{n / rescan:8.0f} files/s   "
              f"{scan / rescan:.0f}x the first scan, {reference / rescan:.0f}x the pydicom loop")
        slices = int(summary.subjects["n_slices"].sum())
        print(f"conversion of {summary.n_converted} series ({slices} slices) with SimpleITK: "
              f"{summary.n_converted / summary.convert_seconds:.2f} series/s, "
              f"{slices / summary.convert_seconds:.0f} slices/s")
        print(f"whole curation run: scan {summary.scan_seconds:.1f} s, conversion {summary.convert_seconds:.1f} s")


if __name__ == "__main__":
    main()

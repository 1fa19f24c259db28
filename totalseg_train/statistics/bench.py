"""make bench-statistics: one subject's statistics, ours (one pass) beside the plain per-class loop.

python -m totalseg_train.statistics.bench --labels L.nii.gz --image I.nii.gz [--workers 2] [--cohort 4004]
[--nodes 16] [--out FILE.json]: times reading the subject and both computations, checks that they agree
to 1e-6, and extrapolates ours (read + measure, one subject per worker) to a cohort.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from totalseg_train.statistics.inputs import HuCheck, read_subject
from totalseg_train.statistics.measures import MEASURES, reference_statistics, structure_statistics


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--workers", type=int, default=2, help="processes of the extrapolation (cores)")
    parser.add_argument("--cohort", type=int, default=4004, help="subjects of the extrapolation (the paper's study)")
    parser.add_argument("--nodes", type=int, default=16, help="nodes of a job array, each with --workers cores")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    volumes, read_s = _timed(read_subject, Path(args.labels), Path(args.image), HuCheck())
    ours, ours_s = _timed(structure_statistics, volumes.labels, volumes.hu, volumes.spacing_zyx)
    reference, reference_s = _timed(reference_statistics, volumes.labels, volumes.hu, volumes.spacing_zyx)
    pd.testing.assert_frame_equal(ours, reference, rtol=0, atol=1e-6)
    largest = float(np.max(np.abs(ours[MEASURES].to_numpy() - reference[MEASURES].to_numpy())))
    per_subject = read_s + ours_s
    per_minute = args.workers * 60.0 / per_subject
    result = {
        "shape_zyx": list(volumes.labels.shape), "spacing_zyx": list(volumes.spacing_zyx), "classes": len(ours),
        "read_s": read_s, "ours_s": ours_s, "per_class_loop_s": reference_s, "ratio": reference_s / ours_s,
        "largest_difference": largest, "workers": args.workers, "subjects_per_minute": per_minute,
        "cohort": args.cohort, "cohort_hours": args.cohort / per_minute / 60.0, "nodes": args.nodes,
        "cohort_hours_array": args.cohort / per_minute / 60.0 / args.nodes,
    }
    print(f"subject {volumes.labels.shape} voxels (z, y, x) at {volumes.spacing_zyx} mm, {len(ours)} classes")
    print(f"  read (label map + image):       {read_s:7.2f} s")
    print(f"  ours, one pass:                 {ours_s:7.2f} s")
    print(f"  per-class loop (boolean masks): {reference_s:7.2f} s   -> ours is {result['ratio']:.1f}x faster")
    print(f"  same numbers: largest difference {largest:.2e} (tolerance 1e-6)")
    print(f"  {per_minute:.1f} subjects/minute on {args.workers} cores (read + measure, one subject per worker)")
    print(f"  {args.cohort} subjects: {result['cohort_hours']:.1f} h on {args.workers} cores, "
          f"{result['cohort_hours_array'] * 60:.0f} min on a {args.nodes}-node array (shard.index=i shard.count={args.nodes})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

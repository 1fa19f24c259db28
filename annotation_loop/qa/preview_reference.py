"""TotalSegmentator's own preview, timed: the reference side of ``make bench-qa``.

Runs in the reference environment that ``make bench-qa`` builds (``.venv-tsref``: TotalSegmentator 2.18.0
with the fury < 2 / VTK 9.3 it requires, and Xvfb), not in ours; it imports nothing of this project, so
it is started as a script. It calls ``totalsegmentator.preview.generate_preview`` exactly as
TotalSegmentator's ``nnunet.py`` does after a prediction: the CT in closest-canonical orientation, the
label array on the same grid, smoothing 20, task ``total`` (each call starts its own Xvfb, as there).
Prints one JSON line per workload: the seconds of every call, the first one in the process first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs=3, action="append", metavar=("NAME", "CT", "LABELS"), required=True,
                        help="a CT and its v2 `total` label map on the same grid")
    parser.add_argument("--repeats", type=int, default=3, help="previews per workload in this process")
    parser.add_argument("--keep", type=Path, help="folder to keep the last preview of each workload in")
    args = parser.parse_args()

    import nibabel as nib
    from totalsegmentator.preview import generate_preview

    with tempfile.TemporaryDirectory() as tmp:
        for name, ct_path, labels_path in args.workload:
            ct = nib.as_closest_canonical(nib.load(ct_path))
            labels = nib.as_closest_canonical(nib.load(labels_path)).get_fdata()
            out = (args.keep or Path(tmp)) / f"ts_preview_{name}.png"
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                generate_preview(ct, out, labels, 20, "total")
                seconds.append(time.perf_counter() - start)
            print(json.dumps({"workload": name, "seconds": seconds, "shape": list(ct.shape)}), flush=True)


if __name__ == "__main__":
    main()

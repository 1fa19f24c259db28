"""python -m annotation_loop.scale_bench (``make bench-scale``): how the per-subject stages scale out.

On a phantom cohort at the demo's grid, every stage runs as a user runs it (its command, Hydra and all):
curation, truth export, QA, evaluation and statistics in one process each, giving each stage's measured
cost per subject on this machine; then QA, the dearest per-subject stage, as a sweep of 1, 2 and 4 local
jobs (``hydra/launcher=local``, ``shard.count``), giving subjects per minute against the number of jobs,
merge included. Side by side with each sweep, and with ``tiny_parts``' two part models trained as two local
jobs, the same sweep on submitit's local launcher as it comes, every job on every core (the reference: our
launcher config without its job shares, totalseg_train/local_launcher.py). Last, an estimate for the paper's
1204 subjects on a 16-GPU cluster from those costs: marked as an estimate, since the jobs there have other
cores and GPUs and the training is not measured here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

PAPER_SUBJECTS = 1204
CLUSTER_JOBS = 16
DEMO_GRID = ["pixel_spacing_mm=6.0", "slice_thickness_mm.values=[5.0]", "slice_thickness_mm.weights=[1.0]"]


def timed(module: str, *overrides: str, sweep: bool = False) -> float:
    """Seconds of wall time of one stage command (start-up included, as a cluster job pays it)."""
    command = [sys.executable, "-m", module, *(["-m"] if sweep else []), *overrides]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
    return time.perf_counter() - start


PARTS = "organs,cardiac"


def local_jobs(shares: bool) -> list[str]:
    """The local launcher; without shares, submitit's as it comes (every job on every core, the same first GPUs)."""
    return ["hydra/launcher=local", *([] if shares else ["~hydra.callbacks.local_job_shares"])]


def qa_sweep(ws: Path, jobs: int, shares: bool = True) -> float:
    out = ws / (f"qa_{jobs}_jobs" if shares else f"qa_{jobs}_jobs_without_shares")
    common = [f"paths.workspace={ws}", f"labels_dir={ws / 'truth_labels'}", "workers=1", f"out={out}"]
    if jobs == 1:
        return timed("annotation_loop.qa", *common)
    return timed("annotation_loop.qa", *common, f"shard.index={','.join(map(str, range(jobs)))}",
                 f"shard.count={jobs}", *local_jobs(shares), sweep=True)


def parts_sweep(ws: Path, shares: bool) -> tuple[float, float]:
    """``tiny_parts``' two part models trained on the cohort as two local jobs, each with nnU-Net's default
    threads (all the cores it may use), in a workspace of their own: export, planning, 2 epochs of 20 steps,
    and the test split predicted and scored once both are done. Returns the sweep's seconds and the mean of
    the epoch times nnU-Net logged."""
    cohort = [f"images_dir={ws / 'curated' / 'images'}", f"subjects_csv={ws / 'curated' / 'subjects.csv'}",
              f"labels_dir={ws / 'truth_labels'}"]
    workspace = ws / ("parts" if shares else "parts_without_shares")
    wall = timed("totalseg_train", "+experiment=tiny_parts", f"paths.workspace={workspace}", *cohort,
                 "model.epochs=2", "model.iterations_per_epoch=20", "model.final_validation=false", "workers=1",
                 "data_workers=0", f"part={PARTS}", *local_jobs(shares), sweep=True)
    epochs = [float(seconds) for log in workspace.glob("nnunet/results/*/*/fold_0/training_log_*.txt")
              for seconds in re.findall(r"Epoch time: ([\d.]+) s", log.read_text())]
    return wall, sum(epochs) / len(epochs)


def estimate(costs: pd.DataFrame, subjects: int, jobs: int) -> pd.DataFrame:
    """Wall hours of each stage for ``subjects`` subjects split evenly over ``jobs`` jobs like this machine."""
    hours = costs.seconds_per_subject * subjects / jobs / 3600
    return pd.DataFrame({"stage": costs.stage, "hours_one_machine": costs.seconds_per_subject * subjects / 3600,
                         f"hours_{jobs}_jobs": hours})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12, help="phantom patients (default 12)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4], help="QA sweep sizes (default 1 2 4)")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        ws = (args.keep or Path(tmp)).resolve()
        base = [f"paths.workspace={ws}"]
        timed("data_prep.phantom", *base, f"n_subjects={args.subjects}", "seed=0", *DEMO_GRID)
        seconds = {"curation": timed("data_prep.curate", *base, "progress=false")}
        n = len(pd.read_csv(ws / "curated" / "subjects.csv"))
        seconds["truth export"] = timed("data_prep.phantom.truth_labels", *base)
        sweeps = {jobs: qa_sweep(ws, jobs) for jobs in args.jobs}
        unshared = {jobs: qa_sweep(ws, jobs, shares=False) for jobs in args.jobs if jobs > 1}
        parts = {shares: parts_sweep(ws, shares) for shares in (True, False)}
        seconds["QA (flags and sheets)"] = sweeps[1] if 1 in sweeps else qa_sweep(ws, 1)
        labels = ws / "truth_labels"
        seconds["evaluation"] = timed("totalseg_train.evaluate", *base, f"gt_dir={labels}", f"pred_dir={labels}",
                                      f"out_dir={ws / 'evaluation'}")
        seconds["statistics"] = timed("totalseg_train.statistics", *base, f"labels_dir={labels}", "progress=false")
    costs = pd.DataFrame({"stage": list(seconds), "seconds": list(seconds.values())})
    costs["seconds_per_subject"] = costs.seconds / n
    print(f"\nper-subject stages on {n} phantom subjects (demo grid), one command each on this machine "
          "(start-up included):")
    for row in costs.itertuples():
        print(f"  {row.stage:<22} {row.seconds:6.1f} s   {row.seconds_per_subject:5.2f} s/subject")
    print("\nQA as a sweep of local jobs (hydra/launcher=local), merge included:")
    one = sweeps.get(1)
    for jobs, wall in sorted(sweeps.items()):
        speedup = f"   {one / wall:.2f}x one job" if one else ""
        reference = (f"   without job shares: {unshared[jobs]:6.1f} s ({unshared[jobs] / wall:.2f}x the time)"
                     if jobs in unshared else "")
        print(f"  {jobs} job(s): {wall:6.1f} s   {n / wall * 60:5.1f} subjects/min{speedup}{reference}")
    print(f"\ntiny_parts' two part models ({PARTS}) trained as two local jobs on nnU-Net's default threads:")
    for shares, name in ((True, "each job on its own share of the cores"),
                         (False, "every job on every core (submitit's local launcher as it comes)")):
        (wall, epoch), (own_wall, own_epoch) = parts[shares], parts[True]
        print(f"  {name:<64} sweep {wall:6.1f} s ({wall / own_wall:.2f}x)   epoch {epoch:5.1f} s"
              f" ({epoch / own_epoch:.2f}x)")
    table = estimate(costs, PAPER_SUBJECTS, CLUSTER_JOBS)
    print(f"\nESTIMATE, not a measurement: {PAPER_SUBJECTS} subjects, {CLUSTER_JOBS} jobs each like this machine, "
          "the per-subject costs above (the paper's grid is finer: its costs are higher; training is not included)")
    for row in table.itertuples(index=False):
        print(f"  {row[0]:<22} {row[1]:6.2f} h on one machine   {row[2]:6.2f} h as {CLUSTER_JOBS} jobs")


if __name__ == "__main__":
    main()

"""make gpu-check: seconds per iteration and peak GPU memory of `fast` and one `highres` part, and the runtime of
a whole-body prediction, on a machine with a GPU (issue #16's check; figures go to the README with the GPU named).

    python -m data_prep.gpu_check --out DIR [--device cuda] [--subjects 5] [--epochs 3] [--iterations 25]

A lent GPU machine's minutes are few: the phantom cohorts are drawn straight onto each experiment's grid as NIfTI
(``python -m data_prep.phantom.study``, no DICOM, no curation), whole-body at fast's 3 mm and abdomen at
highres's 1.5 mm; then, each as a user runs it, ``python -m totalseg_train`` trains fast and highres's organs part
for a few epochs (no final validation; the test split is predicted and scored as always) and
``python -m totalseg_train.runtime`` predicts the largest whole-body phantom with fast. GPU memory is what
``nvidia-smi`` shows for the device while a command runs (the CUDA context and PyTorch's cache included);
seconds per iteration are nnU-Net's own epoch times (the last epoch's: the first pays cuDNN's autotuning) over
its training and validation iterations. Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


@dataclass
class Step:
    name: str
    seconds: float
    peak_gpu_mb: float | None  # nvidia-smi's largest reading while the step ran; None without nvidia-smi
    s_per_iteration: float | None = None


def epoch_seconds(training_log: str) -> list[float]:
    """The epoch times nnU-Net writes to its training log (``Epoch time: 4.66 s``), in order."""
    return [float(t) for t in EPOCH_TIME.findall(training_log)]


def gpu_memory_mb(query_output: str) -> float:
    """The largest of ``nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits`` (one line per GPU)."""
    return max(float(line) for line in query_output.split() if line.strip())


class GpuMemoryPoll:
    """Samples nvidia-smi every ``every_s`` while in use; ``peak_mb`` is the largest reading (None: no nvidia-smi)."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak_mb = every_s, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            used = gpu_memory_mb(subprocess.run(query, capture_output=True, text=True, check=True).stdout)
            self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)
            self._stop.wait(self.every_s)

    def __enter__(self) -> GpuMemoryPoll:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def run_step(name: str, command: list[str], log: Path) -> Step:
    """Run one of our commands, its output appended to ``log``; a failure stops the check naming the step."""
    started = time.perf_counter()
    with GpuMemoryPoll() as poll, open(log, "a") as out:
        out.write(f"\n== {name}: {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"gpu-check: {name} failed (exit {done.returncode}); its output is in {log}")
    return Step(name, round(time.perf_counter() - started, 1), poll.peak_mb)


def train(name: str, experiment: str, cohort: Path, workspace: Path, args, log: Path, *extra: str) -> Step:
    """``python -m totalseg_train +experiment=...`` on a study cohort, a few epochs; seconds per iteration from
    nnU-Net's last epoch."""
    step = run_step(name, [sys.executable, "-m", "totalseg_train", f"+experiment={experiment}",
                           f"paths.workspace={workspace}", f"subjects_csv={cohort / 'subjects.csv'}",
                           f"images_dir={cohort / 'images'}", f"labels_dir={cohort / 'labels'}",
                           f"device={args.device}", f"workers={args.workers}", f"model.epochs={args.epochs}",
                           f"model.iterations_per_epoch={args.iterations}",
                           f"model.val_iterations={args.val_iterations}", "model.final_validation=false", *extra,
                           *args.override], log)
    logs = sorted(workspace.rglob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)  # nnU-Net's results
    epochs = epoch_seconds(logs[-1].read_text()) if logs else []
    if epochs:
        step.s_per_iteration = round(epochs[-1] / (args.iterations + args.val_iterations), 3)
    return step


def study(name: str, out: Path, args, log: Path, spacing_mm: float, extent: str) -> Step:
    return run_step(name, [sys.executable, "-m", "data_prep.phantom.study", f"out={out}",
                           f"n_subjects={args.subjects}", f"pixel_spacing_mm={spacing_mm}",
                           f"thickness_mm={spacing_mm}", f"extent={extent}", f"workers={args.workers}",
                           "progress=false", f"paths.workspace={out.parent}"], log)


def gpu_name(device: str) -> str:
    if device != "cuda":
        return device
    import torch

    return torch.cuda.get_device_name(0)


def report(steps: list[Step], runtime: pd.DataFrame, args, gpu: str) -> tuple[dict, str]:
    figures = {"gpu": gpu, "device": args.device, "subjects": args.subjects, "epochs": args.epochs,
               "iterations_per_epoch": args.iterations, "steps": [asdict(s) for s in steps],
               "prediction": runtime.to_dict(orient="records")}
    lines = [f"# gpu-check on {gpu}", "", "| step | seconds | s / iteration | peak GPU memory (MB, nvidia-smi) |",
             "| --- | ---: | ---: | ---: |"]
    for s in steps:
        per_iteration = "" if s.s_per_iteration is None else f"{s.s_per_iteration:.3f}"
        memory = "" if s.peak_gpu_mb is None else f"{s.peak_gpu_mb:.0f}"
        lines.append(f"| {s.name} | {s.seconds:.1f} | {per_iteration} | {memory} |")
    for r in runtime.itertuples():
        memory = "n/a" if pd.isna(r.peak_gpu_mb) else f"{r.peak_gpu_mb:.0f} MB"
        lines.append(f"\nPrediction of {Path(r.file).name} ({r.shape}, {r.voxels / 1e6:.1f} M voxels) with "
                     f"{r.model}: {r.wall_s:.1f} s, peak GPU memory {memory} (torch's peak allocation), "
                     f"peak RAM {r.peak_ram_mb:.0f} MB.")
    return figures, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where gpu_check.json, .md and .log go")
    parser.add_argument("--work", type=Path, help="the cohorts and models (default: <out>/work)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--subjects", type=int, default=5, help="phantom subjects per cohort")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=5)
    parser.add_argument("--workers", type=int, default=12,
                        help="processes drawing the phantom and preprocessing for nnU-Net (a lent machine: 16 cores)")
    parser.add_argument("--fast-mm", type=float, default=3.0, help="fast's cohort spacing (its model's: 3 mm)")
    parser.add_argument("--highres-mm", type=float, default=1.5, help="highres's cohort spacing (its model's)")
    parser.add_argument("--fast", default="fast", help="the 3 mm experiment (tiny: the check's CPU rehearsal)")
    parser.add_argument("--highres", default="highres", help="the 1.5 mm experiment (tiny_parts on a CPU)")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for both trainings")
    args = parser.parse_args(argv)
    work = args.work or args.out / "work"
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    fast_cohort, highres_cohort = work / "cohorts" / "whole_body", work / "cohorts" / "abdomen"
    steps = [study("phantom whole body", fast_cohort, args, log, args.fast_mm, "whole_body"),
             study("phantom abdomen", highres_cohort, args, log, args.highres_mm, "abdomen"),
             train(f"train {args.fast}", args.fast, fast_cohort, work / "fast", args, log),
             train(f"train {args.highres} organs", args.highres, highres_cohort, work / "highres", args, log,
                   "part=organs")]
    largest = max(sorted((fast_cohort / "images").glob("*.nii.gz")), key=lambda p: p.stat().st_size)
    runtime_csv = args.out / "runtime.csv"
    steps.append(run_step(f"predict whole body ({args.fast})", [
        sys.executable, "-m", "totalseg_train.runtime", f"paths.workspace={work / 'fast'}",
        f"models=[{work / 'fast' / 'results' / args.fast}]", f"files={{largest: {largest}}}", "cases=[largest]",
        f"device={args.device}", "reference=false", f"out={runtime_csv}"], log))
    figures, markdown = report(steps, pd.read_csv(runtime_csv), args, gpu_name(args.device))
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=1))
    (args.out / "gpu_check.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""make bench-predict: wall time and peak memory of each trained model predicting CTs of three sizes.

The paper's runtime table (TotalSegmentator's, on an RTX 3090) gives the 1.5 mm and the 3 mm model's time, RAM
and GPU memory on CTs of 512 x 512 x 280 / 458 / 824 voxels. Here every trained model of the workspace
(``<paths.results>/<experiment>/model.json``) predicts the cohort's smallest, median and largest curated image
by voxel count (or given files) through the engine's ``predict``, the path a user takes, each in a fresh
process as a user's command would run: the wall time covers start-up, model loading, prediction and
writing the label map. Peak RAM is the larger of the process tree's summed resident memory (the process and
its nnU-Net worker processes, polled) and the largest single process's own peak (``getrusage``); peak GPU
memory is ``torch.cuda.max_memory_allocated`` in the predicting process (empty without CUDA). The table is
``<paths.reports>/runtime/runtime.csv`` (nnU-Net's console messages in ``runtime.log`` beside it), printed
beside the paper's figures.
"""

from __future__ import annotations

import logging
import multiprocessing
import platform
import resource
import tempfile
import time
from pathlib import Path

import hydra
import pandas as pd
import psutil
from omegaconf import DictConfig

from totalseg_train import published
from totalseg_train.atomic import write_table
from totalseg_train.config import CONFIG_PATH
from totalseg_train.console import captured
from totalseg_train.engine.environment import usable_cores
from totalseg_train.engine.manifest import MANIFEST, read_model_manifest
from totalseg_train.images import NIFTI_SUFFIX, Geometry

log = logging.getLogger(__name__)
CASES = ("smallest", "median", "largest")
COLUMNS = ["model", "case", "path", "file", "shape", "voxels", "wall_s", "peak_ram_mb", "peak_gpu_mb", "device",
           "hardware"]
# ours: the engine's predict (label map brought back from the model's spacing); nnunet: each part model through
# nnU-Net's own predict_from_files (its export resamples every class's logits to the image's grid), the path
# users of nnU-Net take.
PATHS = ("ours", "nnunet")
MB = 2**20


def trained_models(results_dir: str | Path) -> list[Path]:
    """Every model folder of ``results_dir`` whose parts are all trained, sorted by name."""
    folders = sorted(p.parent for p in Path(results_dir).glob(f"*/{MANIFEST}"))
    return [f for f in folders if not read_model_manifest(f).untrained_parts()]


def pick_cases(images: list[Path], cases: list[str]) -> dict[str, Path]:
    """The smallest, median (lower median for an even count) and largest image by voxel count (headers only)."""
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise ValueError(f"cases: unknown {unknown}; use some of {', '.join(CASES)}")
    if not images:
        raise FileNotFoundError("no images to pick the cases from")
    ranked = sorted(images, key=lambda p: (_voxels(Geometry.of_file(p).size), p.name))
    index = {"smallest": 0, "median": (len(ranked) - 1) // 2, "largest": len(ranked) - 1}
    return {case: ranked[index[case]] for case in cases}


def _voxels(size: tuple[int, ...]) -> int:
    n = 1
    for s in size:
        n *= int(s)
    return n


def hardware_name(device: str) -> str:
    """The GPU's name for cuda, else the CPU model and the logical cores this process may use."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({usable_cores()} cores)"


def _predict_case(model_dir: str, image: str, out_dir: str, device: str, workers: int, threads: int | None,
                  log_file: str, results: multiprocessing.Queue, path: str = "ours") -> None:
    """The measured process: one prediction as a user runs it (``path``: see ``PATHS``); reports its own peaks
    through ``results``. nnU-Net's console output goes to ``log_file`` (its last lines are shown if the
    prediction fails)."""
    import torch

    from totalseg_train.engine.inference import part_predictor, predict
    from totalseg_train.engine.training import set_torch_threads

    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with captured(Path(log_file)):  # file-descriptor level: nnU-Net's worker processes print too
        if path == "ours":
            predict(model_dir, [image], out_dir, device=device, workers=workers, threads=threads, overwrite=True,
                    progress=False)
        else:
            trained, torch_dev = read_model_manifest(model_dir), torch.device(device)
            set_torch_threads(torch_dev, threads)
            for part in trained.parts:
                predictor = part_predictor(part, torch_dev, trained.tile_step_size)  # nnU-Net's own predictor
                predictor.predict_from_files([[image]], [str(Path(out_dir) / part.part / "case")], overwrite=True,
                                             num_processes_preprocessing=max(1, workers),
                                             num_processes_segmentation_export=max(1, workers))
    kib = 1024  # ru_maxrss is in KiB on Linux
    results.put({"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / MB,
                 "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / MB,
                 "gpu_mb": torch.cuda.max_memory_allocated() / MB if cuda else None})


def _tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and its living descendants (0 once it is gone)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure_case(model_dir: Path, image: Path, device: str, workers: int, threads: int | None,
                 poll_s: float, log_file: Path, path: str = "ours") -> dict:
    """Predict ``image`` with the model in a fresh process; wall_s, peak_ram_mb and peak_gpu_mb."""
    context = multiprocessing.get_context("spawn")  # a clean process, as a user's command starts
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as out_dir:
        started = time.perf_counter()
        worker = context.Process(target=_predict_case, args=(str(model_dir), str(image), out_dir, device, workers,
                                                             threads, str(log_file), results, path))
        worker.start()
        watched, peak_tree = psutil.Process(worker.pid), 0
        while worker.is_alive():
            peak_tree = max(peak_tree, _tree_rss(watched))
            worker.join(poll_s)
        wall = time.perf_counter() - started
        if worker.exitcode != 0:
            raise RuntimeError(f"predicting {image} with {model_dir} failed (exit code {worker.exitcode}); "
                               f"see the messages above and {log_file}")
        own = results.get(timeout=60)
    return {"wall_s": round(wall, 2), "peak_ram_mb": round(max(peak_tree / MB, own["self_mb"], own["children_mb"]), 1),
            "peak_gpu_mb": None if own["gpu_mb"] is None else round(own["gpu_mb"], 1)}


def bench_predict(cfg: DictConfig) -> pd.DataFrame:
    """Measure every (model, case) and write the table to ``cfg.out``; returns it (``COLUMNS``)."""
    models = [Path(m) for m in cfg.models] if cfg.models else trained_models(cfg.paths.results)
    if not models:
        raise FileNotFoundError(f"no trained model in {cfg.paths.results} (train one: python -m totalseg_train "
                                "+experiment=...)")
    given = {str(case): Path(path) for case, path in (cfg.files or {}).items()}
    to_pick = [c for c in cfg.cases if c not in given]
    picked = pick_cases(sorted(Path(cfg.images_dir).glob(f"*{NIFTI_SUFFIX}")), to_pick) if to_pick else {}
    files = {case: given.get(case) or picked[case] for case in cfg.cases}
    import torch

    device = str(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hardware = hardware_name(device)
    log_file = Path(cfg.out).with_suffix(".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("")
    rows = []
    paths = PATHS if cfg.reference else PATHS[:1]
    for model_dir in models:
        name = read_model_manifest(model_dir).experiment
        for case, image in files.items():
            size = Geometry.of_file(image).size
            for path in paths:  # side by side, each in a fresh process
                log.info("%s: predicting the %s case %s (%s voxels) on %s, %s", name, case, image.name,
                         "x".join(map(str, size)), device, path)
                measured = measure_case(model_dir, image, device, int(cfg.workers), cfg.torch_threads,
                                        float(cfg.poll_s), log_file, path)
                rows.append({"model": name, "case": case, "path": path, "file": str(image),
                             "shape": "x".join(map(str, size)), "voxels": _voxels(size), **measured, "device": device,
                             "hardware": hardware})
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_table(table, Path(cfg.out))
    return table


def paper_runtime() -> pd.DataFrame:
    """The paper's runtime table: paper_model, case, shape, voxels, wall_s, ram_mb, gpu_mb (RTX 3090)."""
    rows = published.headline()
    rows = rows[rows["table"] == "runtime"].copy()
    rows[["paper_model", "shape"]] = rows["model"].str.split("@", expand=True)
    table = rows.pivot_table(index=["paper_model", "shape"], columns="measure", values="value").reset_index()
    table["voxels"] = [_voxels(tuple(int(v) for v in s.split("x"))) for s in table["shape"]]
    table = table.sort_values(["paper_model", "voxels"], ignore_index=True)
    table["case"] = [CASES[i] for i in table.groupby("paper_model").cumcount()]
    return pd.DataFrame({"paper_model": table.paper_model, "case": table.case, "shape": table["shape"],
                         "voxels": table.voxels, "wall_s": table.seconds, "ram_mb": table.ram_gb * 1024,
                         "gpu_mb": table.gpu_gb * 1024})


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, paper_models: dict[str, str]) -> str:
    """Our rows beside the paper's row of the same case: the paper's model where ``paper_models`` (configs/paper)
    names one for ours, else its 3 mm model; the ratio of seconds per million voxels (ours / paper's). Rows
    measured through nnU-Net's own path follow, with its time over ours."""
    lines = [f"{'model':<12} {'case':<8} {'shape':>13} {'wall s':>8} {'RAM MB':>8} {'GPU MB':>8} | "
             f"{'paper (RTX 3090)':<14} {'shape':>11} {'wall s':>7} {'RAM MB':>7} {'GPU MB':>7} | s/Mvoxel ratio"]
    for row in ours[ours.path == "ours"].itertuples():
        ref_model = paper_models.get(row.model, published.FAST)
        ref = paper[(paper.paper_model == ref_model) & (paper.case == row.case)]
        gpu = "-" if pd.isna(row.peak_gpu_mb) else f"{row.peak_gpu_mb:.0f}"
        text = f"{row.model:<12} {row.case:<8} {row.shape:>13} {row.wall_s:>8.1f} {row.peak_ram_mb:>8.0f} {gpu:>8} | "
        if ref.empty:
            lines.append(text + "no published figure")
            continue
        r = ref.iloc[0]
        ratio = (row.wall_s / row.voxels) / (r.wall_s / r.voxels)
        lines.append(text + f"{r.paper_model:<14} {r['shape']:>11} {r.wall_s:>7.0f} {r.ram_mb:>7.0f} "
                     f"{r.gpu_mb:>7.0f} | {ratio:.2f}")
    reference = ours[ours.path == "nnunet"]
    if not reference.empty:
        lines.append(f"{'model':<12} {'case':<8} {'nnU-Net s':>9} {'ours s':>7} {'nnU-Net/ours':>12} "
                     f"{'RAM MB nnU-Net':>14} {'ours':>6}")
        own = ours[ours.path == "ours"].set_index(["model", "case"])
        for row in reference.itertuples():
            mine = own.loc[(row.model, row.case)]
            lines.append(f"{row.model:<12} {row.case:<8} {row.wall_s:>9.1f} {mine.wall_s:>7.1f} "
                         f"{row.wall_s / mine.wall_s:>12.2f} {row.peak_ram_mb:>14.0f} {mine.peak_ram_mb:>6.0f}")
    devices = ", ".join(sorted({f"{d} ({h})" for d, h in zip(ours.device, ours.hardware)}))
    lines.append(f"ours on {devices}; paper: TotalSegmentator's runtime table, RTX 3090")
    return "\n".join(lines)


@hydra.main(config_path=CONFIG_PATH, config_name="bench_predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        table = bench_predict(cfg)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"bench-predict: {err}") from None
    print(side_by_side(table, paper_runtime(), dict(cfg.paper.models)))
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main()

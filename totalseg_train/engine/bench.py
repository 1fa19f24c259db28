"""make bench-train: training speed of tiny and fast, the engine's overhead over nnU-Net, tiny's test Dice.

On a curated cohort with labels (the Makefile target builds a 20-subject phantom cohort):
1. tiny is exported, planned and preprocessed once; then trained alternately by nnU-Net's own
   ``run_training`` (direct) and by the engine's ``train_model`` (which finds the export and the plans
   done and trains), on the same preprocessed data, in the order direct, engine, engine, direct, ...
   The overhead is the engine's total time over the direct total.
2. Seconds per iteration: nnU-Net's logged epoch times (first epoch of each run left out: warm-up),
   divided by the training iterations of an epoch (an epoch also runs the validation iterations).
3. fast is planned and preprocessed at 3 mm and its training loop timed for a few iterations.
4. tiny is trained for as many epochs as fit in the time budget, then the engine predicts and scores
   the test split; the test-split mean Dice is reported.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from totalseg_train.atomic import write_text
from totalseg_train.config import CONFIG_PATH, compose_config
from totalseg_train.engine.environment import usable_cores

log = logging.getLogger(__name__)


def epoch_seconds(logging_record: dict) -> list[float]:
    return [end - start for start, end in zip(logging_record["epoch_start_timestamps"],
                                              logging_record["epoch_end_timestamps"])]


def seconds_per_iteration(runs: list[list[float]], iterations: int) -> float:
    """Median epoch time over the runs, first epoch of each left out, per training iteration."""
    steady = [t for run in runs for t in (run[1:] if len(run) > 1 else run)]
    return statistics.median(steady) / iterations


def train_configs(bench: DictConfig, experiment: str, schedule: DictConfig, extra: list[str] = ()) -> DictConfig:
    return compose_config("train", [
        f"+experiment={experiment}", f"paths.workspace={bench.paths.workspace}", f"labels_dir={bench.labels_dir}",
        f"device={bench.device}", f"model.epochs={schedule.epochs}",
        f"model.iterations_per_epoch={schedule.iterations_per_epoch}", f"model.val_iterations={schedule.val_iterations}",
        *bench.train_overrides, *extra])


def checkpoint_logging(folder: Path) -> dict:
    from totalseg_train.engine.training import FINAL_CHECKPOINT, fold_folder

    return torch.load(fold_folder(folder) / FINAL_CHECKPOINT, map_location="cpu", weights_only=False)["logging"]


def prepared(bench: DictConfig, experiment: str, section: DictConfig):
    """The experiment's config, its single part dataset, its plan and the seconds planning took."""
    from totalseg_train.engine.datasets import part_datasets
    from totalseg_train.engine.environment import configure_nnunet
    from totalseg_train.engine.pipeline import make_split, prepare_part

    cfg = train_configs(bench, experiment, section)
    configure_nnunet(cfg)
    start = time.perf_counter()
    dataset = part_datasets(cfg)[0]
    plan = prepare_part(dataset, make_split(cfg), cfg)
    return cfg, dataset, plan, time.perf_counter() - start


def bench_overhead(bench: DictConfig) -> dict:
    from nnunetv2.run.run_training import run_training

    from totalseg_train.engine.environment import nnunet_folders, scoped_environment, torch_device
    from totalseg_train.engine.pipeline import train_model
    from totalseg_train.engine.training import augmentation_workers, model_folder, set_torch_threads, trainer_name

    cfg, dataset, plan, prepare_seconds = prepared(bench, "tiny", bench.overhead)
    engine_folder = model_folder(dataset, cfg)
    direct_root = Path(cfg.paths.nnunet) / "results_direct"
    direct_folder = direct_root / engine_folder.relative_to(nnunet_folders(cfg)["nnUNet_results"])
    device = torch_device(str(cfg.device))
    times, epochs = {"direct": [], "engine": [], "warm-up": []}, {"direct": [], "engine": [], "warm-up": []}
    # A first training in a process pays one-off costs (kernel set-up, file caches): a warm-up run not counted.
    order = ["warm-up"] + (["direct", "engine", "engine", "direct"] * int(bench.overhead.rounds))[
        : 2 * int(bench.overhead.rounds)]
    for way in order:
        folder = engine_folder if way == "engine" else direct_folder
        shutil.rmtree(folder, ignore_errors=True)
        log.info("tiny, %s", way)
        start = time.perf_counter()
        if way == "engine":
            train_model(cfg)
        else:  # what nnUNetv2_train does, on the engine's plans and preprocessed data
            set_torch_threads(device, cfg.torch_threads)
            env = {"nnUNet_results": str(direct_root), "nnUNet_n_proc_DA": augmentation_workers(cfg.data_workers)}
            with scoped_environment(env):
                run_training(str(dataset.dataset_id), plan.configuration, 0, trainer_name(cfg.model),
                             plan.plans_identifier, device=device)
        times[way].append(time.perf_counter() - start)
        epochs[way].append(epoch_seconds(checkpoint_logging(folder)))
    iterations = int(cfg.model.iterations_per_epoch)
    runs = epochs["direct"] + epochs["engine"]

    def outside_epochs(way: str) -> float:
        """Mean time of a run outside nnU-Net's epochs: start-up, the engine's own work, final validation."""
        return statistics.mean(t - sum(e) for t, e in zip(times[way], epochs[way]))

    return {
        "prepare_seconds": prepare_seconds, "warm_up_seconds": times["warm-up"][0],
        "direct_seconds": times["direct"], "engine_seconds": times["engine"],
        "overhead": sum(times["engine"]) / sum(times["direct"]) - 1,
        "overhead_outside_epochs": (outside_epochs("engine") - outside_epochs("direct")) / statistics.mean(
            times["direct"]),
        "seconds_per_iteration": seconds_per_iteration(runs, iterations),
        "seconds_per_epoch": statistics.median(t for run in runs for t in run[1:]),
        "iterations_per_epoch": iterations, "val_iterations": int(cfg.model.val_iterations),
    }


def bench_fast(bench: DictConfig) -> dict:
    from nnunetv2.run.run_training import get_trainer_from_args

    from totalseg_train.engine.environment import torch_device
    from totalseg_train.engine.training import model_folder, set_torch_threads, trainer_name

    cfg, dataset, plan, prepare_seconds = prepared(bench, "fast", bench.fast)
    shutil.rmtree(model_folder(dataset, cfg), ignore_errors=True)
    device = torch_device(str(cfg.device))
    set_torch_threads(device, cfg.torch_threads)
    # The training loop only: nnU-Net's final validation of the full-size network takes long on a CPU.
    trainer = get_trainer_from_args(str(dataset.dataset_id), plan.configuration, 0, trainer_name(cfg.model),
                                    plan.plans_identifier, device=device)
    log.info("fast: %s epochs of %s iterations", trainer.num_epochs, trainer.num_iterations_per_epoch)
    trainer.run_training()
    configuration = plan.plans()["configurations"]["3d_fullres"]
    return {
        "prepare_seconds": prepare_seconds,
        "seconds_per_iteration": seconds_per_iteration([epoch_seconds(trainer.logger.get_checkpoint())],
                                                       int(cfg.model.iterations_per_epoch)),
        "patch_size": configuration["patch_size"], "batch_size": configuration["batch_size"],
        "iterations_per_epoch": int(cfg.model.iterations_per_epoch), "val_iterations": int(cfg.model.val_iterations),
    }


def bench_dice(bench: DictConfig, seconds_per_epoch: float) -> dict:
    from totalseg_train.engine.datasets import part_datasets
    from totalseg_train.engine.pipeline import run
    from totalseg_train.engine.training import model_folder

    budget = float(bench.dice.train_seconds)
    epochs = max(1, int(0.95 * budget / seconds_per_epoch))  # the first epoch warms up: keep a margin
    cfg = train_configs(bench, "tiny", bench.overhead, [f"model.epochs={epochs}"])
    shutil.rmtree(model_folder(part_datasets(cfg)[0], cfg), ignore_errors=True)
    shutil.rmtree(Path(cfg.paths.results) / str(cfg.model.name), ignore_errors=True)
    summary = run(cfg)
    record = summary["parts"]["all"]
    per_class = summary["evaluation"].get("per_class", {})
    dice_of = {name: v.get("dice", {}).get("mean") for name, v in per_class.items()}
    best = sorted(((name, d) for name, d in dice_of.items() if isinstance(d, float) and math.isfinite(d)),
                  key=lambda item: -item[1])[:5]
    return {"epochs": epochs, "training_seconds": record["training_seconds"], "best_classes": best,
            "test_subjects": summary["split"]["test_subjects"],
            "test_mean_dice": summary["evaluation"]["overall"]["dice"]["mean"],
            "test_mean_nsd": summary["evaluation"]["overall"]["nsd"]["mean"],
            "validation_dice": record.get("validation_dice")}


@hydra.main(config_path=CONFIG_PATH, config_name="bench_train", version_base="1.3")
def main(bench: DictConfig) -> None:
    from totalseg_train.engine.environment import configure_nnunet

    configure_nnunet(train_configs(bench, "tiny", bench.overhead))  # before nnU-Net is first imported
    tiny = bench_overhead(bench)
    fast = bench_fast(bench)
    dice = bench_dice(bench, tiny["seconds_per_epoch"])
    result = {"cpus": usable_cores(), "tiny": tiny, "fast": fast, "tiny_dice": dice}
    out = Path(bench.out)
    write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"\ntraining speed on {usable_cores()} CPU cores ({bench.device}):")
    print(f"  tiny: {tiny['seconds_per_iteration']:.3f} s/iteration ({tiny['iterations_per_epoch']} training + "
          f"{tiny['val_iterations']} validation iterations per epoch: {tiny['seconds_per_epoch']:.1f} s)")
    print(f"  fast: {fast['seconds_per_iteration']:.2f} s/iteration (patch {fast['patch_size']}, "
          f"batch {fast['batch_size']})")
    direct, engine = sum(tiny["direct_seconds"]), sum(tiny["engine_seconds"])
    print(f"engine overhead against nnU-Net's run_training on the same preprocessed data (tiny, "
          f"{len(tiny['direct_seconds'])} runs each after a warm-up run): direct {direct:.1f} s, engine "
          f"{engine:.1f} s -> {100 * tiny['overhead']:+.1f} % (goal: at most +5 %); outside nnU-Net's epochs "
          f"(start-up, engine work, validation; not subject to the epochs' noise): "
          f"{100 * tiny['overhead_outside_epochs']:+.1f} % of a direct run")
    print(f"tiny after {dice['training_seconds']:.0f} s of training ({dice['epochs']} epochs): test-split mean "
          f"Dice {dice['test_mean_dice']:.3f}, NSD {dice['test_mean_nsd']:.3f} "
          f"({len(dice['test_subjects'])} test subject(s)); best classes: "
          + ", ".join(f"{name} {value:.2f}" for name, value in dice["best_classes"]))
    print(f"written: {out}")


if __name__ == "__main__":
    main()

"""The training engine end to end on a curated phantom cohort: real curation, real nnU-Net planning,
training (tiny, a few iterations on CPU), prediction and evaluation; wandb offline; highres planning."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from omegaconf import OmegaConf
from wandb.proto import wandb_internal_pb2

from totalseg_train import classes
from totalseg_train.config import compose_config
from totalseg_train.engine import predict, train_model
from totalseg_train.engine.datasets import part_datasets
from totalseg_train.engine.environment import nnunet_environment
from totalseg_train.engine.export import export_dataset, raw_dataset_dir
from totalseg_train.engine.pipeline import make_split, prepare_part
from totalseg_train.engine.training import TRAINED_WITH, TrainedWithOtherSettings
from totalseg_train.images import Geometry

from conftest import train_overrides  # tests/ is on sys.path (pytest's rootdir-relative conftest import)

REPO = Path(__file__).resolve().parent.parent
MODEL = "nnUNetTrainerTotalSegNoDA__TotalSegPlans__3d_fullres_tiny"


def read_split(ws: Path) -> dict:
    return json.loads((ws / "nnunet" / "split.json").read_text())


def test_the_test_split_is_predicted_as_v1_label_maps_on_each_images_grid(tiny_run):
    split = read_split(tiny_run)
    predictions = tiny_run / "results" / "tiny" / "predictions"
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == [f"{s}.nii.gz" for s in split["test"]]
    for sid in split["test"]:
        label = sitk.ReadImage(str(predictions / f"{sid}.nii.gz"))
        assert Geometry.of_image(label).matches(Geometry.of_file(tiny_run / "curated" / "images" / f"{sid}.nii.gz"))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) <= set(range(classes.num_classes() + 1))


def test_test_subjects_never_reach_nnunet_and_the_split_is_fold_0(tiny_run):
    split = read_split(tiny_run)
    patients = split["patients"]
    assert {patients[s] for s in split["test"]}.isdisjoint(patients[s] for s in split["train"] + split["val"])
    assert len(split["train"]) == 2 and len({patients[s] for s in split["train"]}) == 1  # both exams of a patient
    nnunet = tiny_run / "nnunet"
    everything = [p.name for p in nnunet.rglob("*") if p.is_file()]
    for sid in split["test"]:
        assert not [name for name in everything if name.startswith(f"{sid}.") or name.startswith(f"{sid}_")]
    folds = json.loads((nnunet / "preprocessed" / "Dataset390_tiny" / "splits_final.json").read_text())
    assert folds == [{"train": sorted(split["train"]), "val": sorted(split["val"])}]
    dataset = json.loads((nnunet / "raw" / "Dataset390_tiny" / "dataset.json").read_text())
    assert dataset["numTraining"] == 3 and len(dataset["labels"]) == 105
    assert dataset["labels"]["liver"] == classes.id_of("liver")


def test_the_model_is_planned_and_trained_as_the_tiny_experiment_says(tiny_run):
    plans = json.loads((tiny_run / "nnunet" / "preprocessed" / "Dataset390_tiny" / "TotalSegPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [10.0, 10.0, 10.0]
    tiny = plans["configurations"]["3d_fullres_tiny"]
    assert tiny["inherits_from"] == "3d_fullres" and tiny["patch_size"] == [32, 32, 32]
    assert tiny["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64]
    assert tiny["totalseg_training"] == {"num_epochs": 2, "num_iterations_per_epoch": 10,
                                         "num_val_iterations_per_epoch": 2, "optimizer": "adamw",
                                         "initial_lr": 0.001, "checkpoint_every": 1, "initial_checkpoint": None,
                                         "final_validation": True}
    fold = tiny_run / "nnunet" / "results" / "Dataset390_tiny" / MODEL / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and checkpoint["inference_allowed_mirroring_axes"] is None
    assert checkpoint["trainer_name"] == "nnUNetTrainerTotalSegNoDA"  # tiny: augmentation=false
    assert len(checkpoint["logging"]["train_losses"]) == 2
    group = checkpoint["optimizer_state"]["param_groups"][0]  # the experiment's AdamW, not nnU-Net's SGD
    assert group["amsgrad"] is True and "nesterov" not in group and group["initial_lr"] == 0.001


def test_the_run_summary_and_the_test_scores_are_written(tiny_run):
    results = tiny_run / "results" / "tiny"
    summary = json.loads((results / "run_summary.json").read_text())
    assert summary["split"]["test"] == 1 and summary["split"]["test_subjects"] == read_split(tiny_run)["test"]
    part = summary["parts"]["all"]
    assert part["trained"] and part["epochs"] == 2 and part["final_train_loss"] > 0
    assert summary["evaluation"]["subjects"]["scored"] == 1
    scores = pd.read_parquet(results / "scores.parquet")
    assert set(scores.subject_id) == set(summary["split"]["test_subjects"])
    assert summary["config"]["model"]["name"] == "tiny"
    manifest = json.loads((results / "model.json").read_text())
    assert [p["part"] for p in manifest["parts"]] == ["all"] and len(manifest["parts"][0]["v1_class_ids"]) == 104
    assert manifest["tile_step_size"] == 0.5 and manifest["windows_per_batch"] == 2  # configs/train.yaml


def wandb_records(path: Path):
    """The records of a .wandb file (wandb's LevelDB-style log: 32 KiB blocks of CRC, length, type, data)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0:
            pos += left - 7
            continue
        chunk, pos = data[pos:pos + length], pos + length
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_files_hold_the_logged_losses_config_and_test_summary(tiny_run):
    fold = tiny_run / "nnunet" / "results" / "Dataset390_tiny" / MODEL / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    history, config, summary = {}, set(), set()
    run_ids = set()
    for run_file in sorted((fold / "wandb").glob("offline-run-*/run-*.wandb")):
        run_ids.add(run_file.stem)
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                for key in ("train_losses", "val_losses"):
                    if key in items:
                        history.setdefault(key, {})[record.history.step.num] = items[key]
            elif kind == "config":
                config |= {item.key or "/".join(item.nested_key) for item in record.config.update}
            elif kind == "summary":
                summary |= {item.key or "/".join(item.nested_key) for item in record.summary.update}
    assert len(run_ids) == 1  # nnU-Net's run, resumed by the engine
    for key in ("train_losses", "val_losses"):
        logged = [history[key][step] for step in sorted(history[key])]
        assert np.allclose(logged, checkpoint["logging"][key], rtol=1e-6)
    assert "totalseg" in config
    assert "test/overall/dice/mean" in summary


def test_predict_a_single_nifti_on_its_own_grid_with_entropy_at_the_models_spacing(tiny_run, tmp_path):
    source = sitk.ReadImage(str(tiny_run / "curated" / "images" / f"{read_split(tiny_run)['train'][0]}.nii.gz"))
    cropped = source[10:70, 15:75, 5:40]  # another grid than any training image: origin and size differ
    image = tmp_path / "in" / "crop1.nii.gz"
    image.parent.mkdir()
    sitk.WriteImage(cropped, str(image))
    out = tmp_path / "out"
    result = predict(tiny_run / "results" / "tiny", image, out, uncertainty=True, device="cpu", workers=1,
                     progress=False, threads=1)
    assert result == {"crop1": out / "crop1.nii.gz"}
    label = sitk.ReadImage(str(result["crop1"]))
    assert Geometry.of_image(label).matches(Geometry.of_image(cropped))
    labels = sitk.GetArrayFromImage(label)
    entropy = pd.read_csv(out / "entropy.csv")
    assert set(entropy.subject_id) == {"crop1"} and list(entropy.part.unique()) == ["all"]
    # The table counts voxels at tiny's 10 mm; the label map is the same prediction brought to the 6 x 6 x 5 mm
    # grid (nearest neighbour, every 10 mm voxel lands on at least one image voxel).
    assert set(entropy.class_id) == set(np.unique(labels)) - {0}
    image_mm3 = float(np.prod(cropped.GetSpacing())) * np.count_nonzero(labels)
    assert entropy.n_voxels.sum() * 1000.0 == pytest.approx(image_mm3, rel=0.15)
    assert (entropy.mean_entropy >= 0).all() and (entropy.mean_entropy <= np.log(105) + 1e-6).all()
    assert not [p for p in out.rglob("*") if p.suffix in (".npz", ".pkl")]


def test_a_label_map_brought_back_from_the_models_spacing_lands_on_the_images_voxels(tiny_run):
    """nnU-Net's preprocessing of a truth label map (crop, axis order, 10 mm) and back to the image's array."""
    from totalseg_train.engine.inference import labels_on_image_grid, part_predictor
    from totalseg_train.engine.manifest import read_model_manifest

    subject = read_split(tiny_run)["test"][0]
    predictor = part_predictor(read_model_manifest(tiny_run / "results" / "tiny").parts[0], torch.device("cpu"), 1.0)
    truth_file = tiny_run / "truth_labels" / f"{subject}.nii.gz"
    _, seg, properties = predictor.configuration_manager.preprocessor_class(verbose=False).run_case(
        [str(tiny_run / "curated" / "images" / f"{subject}.nii.gz")], str(truth_file), predictor.plans_manager,
        predictor.configuration_manager, predictor.dataset_json)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_file)))
    assert seg.shape[1:] != truth.shape  # at 10 mm
    back = labels_on_image_grid(np.clip(seg[0], 0, None).astype(np.uint8), properties, predictor.plans_manager,
                                predictor.configuration_manager)
    assert back.shape == truth.shape and back.dtype == np.uint8
    largest = np.argsort(np.bincount(truth.ravel(), minlength=105)[1:])[::-1][:5] + 1
    for c in largest:
        dice = 2 * np.count_nonzero((back == c) & (truth == c)) / (np.count_nonzero(back == c) + np.count_nonzero(truth == c))
        assert dice > 0.85, (int(c), dice)


def test_windows_sent_through_the_network_together_give_nnunets_own_logits(tiny_run):
    """BatchedWindowsPredictor (4 windows at a time: the last group is short) sums the same windows with the
    same weights as nnU-Net's predictor, one window at a time."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from totalseg_train.engine.inference import part_predictor
    from totalseg_train.engine.manifest import read_model_manifest
    from totalseg_train.engine.sliding_window import BatchedWindowsPredictor

    part = read_model_manifest(tiny_run / "results" / "tiny").parts[0]
    own, batched = (part_predictor(part, torch.device("cpu"), 0.5, k) for k in (1, 4))
    assert type(own) is nnUNetPredictor and isinstance(batched, BatchedWindowsPredictor)
    subject = read_split(tiny_run)["test"][0]
    data, _, _ = own.configuration_manager.preprocessor_class(verbose=False).run_case(
        [str(tiny_run / "curated" / "images" / f"{subject}.nii.gz")], None, own.plans_manager,
        own.configuration_manager, own.dataset_json)
    data = torch.from_numpy(data)
    windows = own._internal_get_sliding_window_slicers(data.shape[1:])
    assert len(windows) % 4 != 0
    expected, got = own.predict_logits_from_preprocessed_data(data), batched.predict_logits_from_preprocessed_data(data)
    assert got.shape == expected.shape == (105, *data.shape[1:])
    # Both sums are kept in half precision, as nnU-Net keeps them, and added in another order: each window added
    # at a voxel rounds once, so they differ by at most about one step per window that covers it.
    steps = (got.float() - expected.float()).abs().max() / (torch.finfo(torch.half).eps * expected.float().abs().max())
    covering = torch.zeros(data.shape[1:])
    for window in windows:
        covering[window[1:]] += 1
    assert steps <= covering.max(), (steps, covering.max())
    assert (got.argmax(0) == expected.argmax(0)).float().mean() > 0.999
    with pytest.raises(ValueError, match="windows_per_batch"):
        BatchedWindowsPredictor(windows_per_batch=0)


def test_a_seeded_training_repeats_exactly(tiny_run, tmp_path):
    cfg = compose_config("train", [*train_overrides(tiny_run), f"paths.nnunet={tmp_path}/nnunet",
                                   f"paths.results={tmp_path}/results", "split.holdout_test=true"])
    again = train_model(cfg)
    first = torch.load(tiny_run / "nnunet" / "results" / "Dataset390_tiny" / MODEL / "fold_0" / "checkpoint_final.pth",
                       map_location="cpu", weights_only=False)
    second = torch.load(tmp_path / "nnunet" / "results" / "Dataset390_tiny" / MODEL / "fold_0" / "checkpoint_final.pth",
                        map_location="cpu", weights_only=False)
    assert again == tmp_path / "results" / "tiny"
    assert first["logging"]["train_losses"] == second["logging"]["train_losses"]
    for name, weights in first["network_weights"].items():
        assert torch.equal(weights, second["network_weights"][name]), name


def test_rerunning_skips_finished_work(tiny_run):
    fold = tiny_run / "nnunet" / "results" / "Dataset390_tiny" / MODEL / "fold_0"
    prediction = next((tiny_run / "results" / "tiny" / "predictions").glob("*.nii.gz"))
    before = {p: p.stat().st_mtime_ns for p in (fold / "checkpoint_final.pth", prediction,
                                                 tiny_run / "nnunet" / "split.json")}
    run = subprocess.run([sys.executable, "-m", "totalseg_train", *train_overrides(tiny_run)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained already" in run.stdout + run.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before


def killed_copy(tiny_run: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the trained tiny model as a kill after its first epoch leaves it: the checkpoint of epoch 1
    (the final one cut back to one epoch's log) as checkpoint_latest, no final checkpoint."""
    shutil.copytree(tiny_run / "nnunet", tmp_path / "nnunet")
    fold = tmp_path / "nnunet" / "results" / "Dataset390_tiny" / MODEL / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    before = {key: list(values) for key, values in checkpoint["logging"].items()}
    checkpoint["current_epoch"] = 1
    checkpoint["logging"] = {key: values[:1] for key, values in checkpoint["logging"].items()}
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    return fold, before


def copy_config(tiny_run: Path, tmp_path: Path, monkeypatch, *extra: str):
    cfg = compose_config("train", [*train_overrides(tiny_run), f"paths.nnunet={tmp_path / 'nnunet'}",
                                   f"paths.results={tmp_path / 'results'}", *extra])
    for key, value in nnunet_environment(cfg).items():
        monkeypatch.setenv(key, value)
    return cfg


def test_a_killed_training_continues_from_its_latest_checkpoint_by_default(tiny_run, tmp_path, monkeypatch):
    fold, before = killed_copy(tiny_run, tmp_path)
    cfg = copy_config(tiny_run, tmp_path, monkeypatch)
    assert cfg.resume is True
    assert train_model(cfg) == tmp_path / "results" / "tiny"
    after = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert after["current_epoch"] == 2 and not (fold / "checkpoint_latest.pth").exists()
    # Epoch 1 is the checkpoint's, epoch 2 was trained now: the log continues, it does not start again.
    losses = after["logging"]["train_losses"]
    assert len(losses) == 2 and losses[0] == before["train_losses"][0]
    assert after["logging"]["epoch_start_timestamps"][1] > before["epoch_end_timestamps"][1]


def test_a_training_killed_in_its_final_validation_validates_again_and_trains_no_more(tiny_run, tmp_path, monkeypatch):
    """make robustness found it: a kill after the final checkpoint, during nnU-Net's final validation, left a
    model that counted as trained and was never validated."""
    shutil.copytree(tiny_run / "nnunet", tmp_path / "nnunet")
    fold = tmp_path / "nnunet" / "results" / "Dataset390_tiny" / MODEL / "fold_0"
    validated = json.loads((fold / "validation" / "summary.json").read_text())
    final = (fold / "checkpoint_final.pth").stat().st_mtime_ns
    (fold / "validation" / "summary.json").unlink()
    for cut in (fold / "validation").glob("*.nii.gz"):
        cut.write_bytes(cut.read_bytes()[:100])  # what a kill during the export leaves
    train_model(copy_config(tiny_run, tmp_path, monkeypatch))
    again = json.loads((fold / "validation" / "summary.json").read_text())
    assert again["foreground_mean"] == validated["foreground_mean"]  # the same weights validated again
    assert (fold / "checkpoint_final.pth").stat().st_mtime_ns == final
    assert all(sitk.ReadImage(str(p)).GetSize()[2] > 1 for p in (fold / "validation").glob("*.nii.gz"))


def test_a_model_folder_trained_with_other_settings_is_an_error_not_reused(tiny_run, tmp_path, monkeypatch):
    fold, _ = killed_copy(tiny_run, tmp_path)
    record = json.loads((fold.parent / TRAINED_WITH).read_text())
    assert record["configuration"]["totalseg_training"]["num_epochs"] == 2 and len(record["subjects"]["train"]) == 2
    cfg = copy_config(tiny_run, tmp_path, monkeypatch, "model.epochs=3", "model.initial_lr=0.01")
    with pytest.raises(TrainedWithOtherSettings) as err:
        train_model(cfg)
    message = str(err.value)
    assert "num_epochs: 2 -> 3" in message and "initial_lr: 0.001 -> 0.01" in message and str(fold.parent) in message
    assert not (fold / "checkpoint_final.pth").exists() and (fold / "checkpoint_latest.pth").exists()
    # The same through the command line: the reason, no traceback, a non-zero exit.
    run = subprocess.run([sys.executable, "-m", "totalseg_train", *train_overrides(tiny_run), "model.epochs=3",
                          f"paths.nnunet={tmp_path / 'nnunet'}", f"paths.results={tmp_path / 'results'}"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode != 0 and "num_epochs: 2 -> 3" in run.stderr and "Traceback" not in run.stderr


def test_highres_exports_five_part_datasets_and_plans_them_at_its_spacing(workspace, monkeypatch):
    """Export of all five parts (each with its own classes), then nnU-Net's planning (no preprocessing, no
    training) at 1.5 mm of two of them: planning one part at 1.5 mm takes about 17 s on two cores."""
    cfg = compose_config("train", ["+experiment=highres", f"paths.workspace={workspace}",
                                   f"labels_dir={workspace / 'train_labels'}",
                                   f"paths.nnunet={workspace / 'nnunet_highres'}", "workers=1"])
    for key, value in nnunet_environment(cfg).items():
        monkeypatch.setenv(key, value)
    split = make_split(cfg)
    raw_root = Path(nnunet_environment(cfg)["nnUNet_raw"])
    datasets = part_datasets(cfg)
    assert [d.name for d in datasets] == ["Dataset310_highres_organs", "Dataset311_highres_vertebrae",
                                          "Dataset312_highres_cardiac", "Dataset313_highres_muscles",
                                          "Dataset314_highres_ribs"]
    for dataset in datasets:
        table = export_dataset(dataset, sorted(split.train + split.val), cfg.images_dir, cfg.labels_dir, raw_root,
                               progress=False)
        assert (table.status != "error").all()
        labels = json.loads((raw_dataset_dir(raw_root, dataset) / "dataset.json").read_text())["labels"]
        assert labels == {"background": 0, **{c.name: i for i, c in enumerate(classes.in_part(dataset.part), 1)}}
        for path in (raw_dataset_dir(raw_root, dataset) / "labelsTr").glob("*.nii.gz"):
            assert np.unique(sitk.GetArrayViewFromImage(sitk.ReadImage(str(path)))).max() <= len(labels) - 1
    for dataset in (datasets[0], datasets[-1]):
        plan = prepare_part(dataset, split, cfg, preprocess=False)
        plans = plan.plans()
        assert plans["dataset_name"] == dataset.name
        assert plans["configurations"]["3d_fullres"]["spacing"] == [1.5, 1.5, 1.5]
        assert plans["configurations"]["3d_fullres_highres"]["totalseg_training"]["num_epochs"] == 4000
        assert not list(plan.preprocessed_dir.glob("TotalSegPlans_3d_fullres"))  # not preprocessed


def test_cfg_job_prints_the_resolved_experiment(tmp_path):
    out = subprocess.run([sys.executable, "-m", "totalseg_train", "+experiment=highres", f"paths.workspace={tmp_path}",
                          "part=ribs", "--cfg", "job", "--resolve"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    cfg = OmegaConf.create(out)
    assert cfg.model.name == "highres" and cfg.model.configuration == "3d_fullres_highres" and cfg.part == "ribs"
    assert cfg.split.file == f"{tmp_path}/nnunet/split.json"
    assert not (tmp_path / "nnunet").exists()


def test_progress_png_is_drawn_after_the_first_and_last_epoch_and_otherwise_at_most_every_30_s(tiny_run, tmp_path,
                                                                                               monkeypatch):
    from totalseg_train.engine import trainers

    fold = tiny_run / "nnunet" / "results" / "Dataset390_tiny" / MODEL / "fold_0"
    assert (fold / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trainer = object.__new__(trainers.nnUNetTrainerTotalSeg)  # the throttle alone: no plans, no network
    drawn, clock = [], [1000.0]
    trainer._plot_in_place = lambda folder: (drawn.append(trainer.current_epoch),
                                             (Path(folder) / "progress.png").write_bytes(b"png"))
    trainer._plotted_at, trainer.num_epochs = float("-inf"), 6
    monkeypatch.setattr(trainers.time, "monotonic", lambda: clock[0])
    for epoch, seconds in enumerate([5, 5, 25, 5, 5, 5]):  # epochs end at 1005, 1010, 1035, 1040, 1045, 1050 s
        clock[0] += seconds
        trainer.current_epoch = epoch
        trainer._plot_progress_atomically(str(tmp_path))
    assert drawn == [0, 2, 5] and trainers.PROGRESS_PLOT_EVERY_S == 30.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.png"]  # no scratch folder left

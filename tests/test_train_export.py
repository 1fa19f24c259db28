"""Engine pieces on small real files and arrays: part datasets, export with bad input, plans overrides,
merging part predictions, entropy."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from omegaconf import OmegaConf

from totalseg_train import classes
from totalseg_train.config import compose_config
from totalseg_train.engine.labelled_subjects import load_cohort
from totalseg_train.engine.datasets import PartDataset, part_datasets, selected_datasets
from totalseg_train.engine.export import export_dataset
from totalseg_train.engine.inference import entropy_by_class, merge_part_labels, voxel_entropy
from totalseg_train.engine.planning import TRAINING_KEY, experiment_configuration, training_settings
from totalseg_train.images import image_from_array

SPACING = (2.0, 2.0, 3.0)


def write(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image_from_array(array, spacing, origin), str(path))


@pytest.fixture
def small_cohort(tmp_path):
    """Four subjects: two good, one label on another grid, one with an id outside the class table."""
    rng = np.random.default_rng(0)
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[1:4, 2:5, 2:5] = classes.id_of("liver")
    labels[2:5, 4:7, 4:7] = classes.id_of("vertebrae_L1")
    for sid in ("s1", "s2", "s3", "s4"):
        write(tmp_path / "images" / f"{sid}.nii.gz", rng.integers(-1000, 1000, (6, 8, 8)).astype(np.int16))
    write(tmp_path / "labels" / "s1.nii.gz", labels)
    write(tmp_path / "labels" / "s2.nii.gz", labels)
    write(tmp_path / "labels" / "s3.nii.gz", labels, origin=(5.0, 0.0, 0.0))
    bad = labels.copy()
    bad[0, 0, 0] = 200
    write(tmp_path / "labels" / "s4.nii.gz", bad)
    pd.DataFrame({"subject_id": ["s1", "s2", "s3", "s4", "s5"], "patient": ["p1", "p1", "p2", "p3", "p4"]}).to_csv(
        tmp_path / "subjects.csv", index=False)
    return tmp_path, labels


def test_highres_has_five_part_datasets_with_the_class_tables_local_ids():
    cfg = compose_config("train", ["+experiment=highres"])
    datasets = part_datasets(cfg)
    assert [(d.part, d.dataset_id) for d in datasets] == [
        ("organs", 310), ("vertebrae", 311), ("cardiac", 312), ("muscles", 313), ("ribs", 314)]
    assert [len(d.global_ids()) for d in datasets] == [17, 24, 18, 21, 24]
    assert sorted(g for d in datasets for g in d.global_ids()) == classes.class_ids()
    ribs = datasets[4]
    assert ribs.name == "Dataset314_highres_ribs"
    labels = ribs.dataset_json(10)["labels"]
    assert labels["background"] == 0 and labels[classes.by_id(ribs.global_ids()[0]).name] == 1
    assert ribs.to_global()[ribs.to_local()[classes.id_of("rib_left_3")]] == classes.id_of("rib_left_3")
    assert ribs.to_local()[classes.id_of("liver")] == 0


def test_heart_experiments_train_the_six_heart_subparts_as_one_part_with_their_own_split():
    heart_ids = [c.id for c in classes.all_classes() if c.heart_subpart]
    assert len(heart_ids) == 6
    ids = {}
    for experiment in ("heart", "heart_tiny"):
        cfg = compose_config("train", [f"+experiment={experiment}", "paths.workspace=/ws"])
        (dataset,) = part_datasets(cfg)
        ids[experiment] = dataset.dataset_id
        assert dataset.part == "heart" and dataset.global_ids() == heart_ids  # local ids 1..6 in class-id order
        assert list(dataset.to_global()) == [0, *heart_ids]
        assert dataset.to_local()[classes.id_of("aorta")] == 0  # cardiac, but not a heart sub-part
        assert dataset.dataset_json(3)["labels"] == {"background": 0, **{classes.by_id(g).name: i
                                                                           for i, g in enumerate(heart_ids, 1)}}
        assert cfg.labels_dir == "/ws/heart/labels" and cfg.split.file == "/ws/nnunet/split_heart.json"
    assert compose_config("train", ["+experiment=heart"]).model.spacing_mm == [1.5, 1.5, 1.5]
    other_ids = {int(compose_config("train", [f"+experiment={e}"]).model.dataset_id) + i
                 for e, n in (("tiny", 1), ("fast", 1), ("highres", 5)) for i in range(n)}
    assert len(set(ids.values())) == 2 and not set(ids.values()) & other_ids
    assert classes.part_local_ids("heart") == {g: i for i, g in enumerate(heart_ids, 1)}
    with pytest.raises(KeyError, match="parts are organs, .*, heart"):
        classes.part_classes("lungs")


def test_a_part_job_selects_one_dataset():
    cfg = compose_config("train", ["+experiment=highres", "part=cardiac"])
    assert [d.name for d in selected_datasets(cfg)] == ["Dataset312_highres_cardiac"]
    with pytest.raises(ValueError, match="has parts"):
        selected_datasets(compose_config("train", ["+experiment=tiny", "part=organs"]))
    with pytest.raises(ValueError, match="unknown part"):
        part_datasets(compose_config("train", ["model.parts=[organs,lungs]"]))


def test_the_cohort_is_every_subject_with_a_label_and_an_image(small_cohort, tmp_path):
    root, _ = small_cohort
    cohort = load_cohort(root / "subjects.csv", root / "images", root / "labels")
    assert cohort == {"s1": "p1", "s2": "p1", "s3": "p2", "s4": "p3"}
    with pytest.raises(FileNotFoundError, match="no label .* s5"):
        load_cohort(root / "subjects.csv", root / "images", root / "labels", ["s1", "s5"])
    with pytest.raises(KeyError, match="s9"):
        load_cohort(root / "subjects.csv", root / "images", root / "labels", ["s9"])
    pd.DataFrame({"subject_id": ["s1"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv: missing column"):
        load_cohort(tmp_path / "bad.csv", root / "images", root / "labels")


def test_export_renumbers_labels_and_reports_bad_subjects_while_the_rest_goes_on(small_cohort, tmp_path):
    root, labels = small_cohort
    vertebrae = PartDataset("highres", "vertebrae", 311)
    table = export_dataset(vertebrae, ["s1", "s2", "s3", "s4"], root / "images", root / "labels", tmp_path / "raw",
                           workers=1, progress=False)
    status = dict(zip(table.subject_id, table.status))
    assert status == {"s1": "exported", "s2": "exported", "s3": "error", "s4": "error"}
    messages = dict(zip(table.subject_id, table.message))
    assert "s3.nii.gz: label grid" in messages["s3"] and "[200]" in messages["s4"]
    folder = tmp_path / "raw" / "Dataset311_highres_vertebrae"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["s1_0000.nii.gz", "s2_0000.nii.gz"]
    exported = sitk.ReadImage(str(folder / "labelsTr" / "s1.nii.gz"))
    local = sitk.GetArrayFromImage(exported)
    assert exported.GetSpacing() == SPACING and local.dtype == np.uint8
    assert set(np.unique(local)) == {0, vertebrae.to_local()[classes.id_of("vertebrae_L1")]}
    assert np.array_equal(local > 0, labels == classes.id_of("vertebrae_L1"))  # liver is not a vertebra
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 2 and len(dataset_json["labels"]) == 25
    assert dataset_json["channel_names"] == {"0": "CT"}


def test_export_skips_done_subjects_and_removes_subjects_that_left(small_cohort, tmp_path):
    root, _ = small_cohort
    organs = PartDataset("fast", "all", 300)
    export_dataset(organs, ["s1", "s2"], root / "images", root / "labels", tmp_path / "raw", progress=False)
    table = export_dataset(organs, ["s1"], root / "images", root / "labels", tmp_path / "raw", progress=False)
    assert list(table.status) == ["skipped"]
    folder = tmp_path / "raw" / "Dataset300_fast"
    assert [p.name for p in (folder / "labelsTr").iterdir()] == ["s1.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1


def test_the_experiment_configuration_inherits_from_3d_fullres_and_merges_the_network():
    planned = {"configurations": {"3d_fullres": {
        "batch_size": 2, "patch_size": [128, 128, 128], "data_identifier": "P_3d_fullres",
        "architecture": {"network_class_name": "PlainConvUNet", "arch_kwargs": {"n_stages": 6, "conv_bias": True}}}}}
    tiny = compose_config("train", ["+experiment=tiny"]).model
    entry = experiment_configuration(planned, OmegaConf.to_container(tiny.plan_overrides),
                                     training_settings(tiny, Path("/m/fold_0/checkpoint_final.pth")))
    assert entry["inherits_from"] == "3d_fullres" and entry["patch_size"] == [32, 32, 32]
    assert entry["architecture"]["network_class_name"] == "PlainConvUNet"
    assert entry["architecture"]["arch_kwargs"]["n_stages"] == 3 and entry["architecture"]["arch_kwargs"]["conv_bias"]
    assert entry["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64]
    assert "data_identifier" not in entry
    assert entry[TRAINING_KEY] == {
        "num_epochs": tiny.epochs, "num_iterations_per_epoch": tiny.iterations_per_epoch,
        "num_val_iterations_per_epoch": tiny.val_iterations, "optimizer": "adamw", "initial_lr": 0.001,
        "checkpoint_every": 1, "initial_checkpoint": "/m/fold_0/checkpoint_final.pth",
        "final_validation": True}


def test_merging_part_predictions_maps_local_ids_to_v1_ids():
    organs, ribs = PartDataset("highres", "organs", 310), PartDataset("highres", "ribs", 314)
    a = np.zeros((2, 3, 3), np.uint8)
    b = np.zeros((2, 3, 3), np.uint8)
    a[0, 0, 0] = organs.to_local()[classes.id_of("liver")]
    b[1, 2, 2] = ribs.to_local()[classes.id_of("rib_right_12")]
    b[0, 0, 0] = ribs.to_local()[classes.id_of("rib_left_1")]  # overlap: the later part wins
    merged = merge_part_labels([(a, organs.to_global()), (b, ribs.to_global())])
    assert merged.dtype == np.uint8
    assert merged[1, 2, 2] == classes.id_of("rib_right_12") and merged[0, 0, 0] == classes.id_of("rib_left_1")
    assert np.count_nonzero(merged) == 2


def test_entropy_is_zero_for_certain_voxels_and_log_k_for_uniform_ones():
    probabilities = np.zeros((3, 1, 1, 4), np.float32)
    probabilities[:, 0, 0, :2] = 1 / 3          # two uncertain voxels
    probabilities[1, 0, 0, 2:] = 1.0            # two certain voxels
    assert np.allclose(voxel_entropy(probabilities)[0, 0], [np.log(3), np.log(3), 0, 0], atol=1e-6)
    labels = np.array([[[1, 1, 1, 2]]], np.uint8)
    table = entropy_by_class(probabilities, labels, np.array([0, 5, 7], np.uint8))
    assert list(table.class_id) == [5, 7] and list(table.n_voxels) == [3, 1]
    assert np.allclose(table.mean_entropy, [2 * np.log(3) / 3, 0.0], atol=1e-6)
    assert list(table.class_name) == [classes.by_id(5).name, classes.by_id(7).name]

"""Comparing two models on the same test subjects, an outside model's predictions in its own ids, and the narrow
experiment's subject and class selection as it reaches nnU-Net's dataset (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from matplotlib.figure import Figure
from scipy.stats import wilcoxon

from totalseg_train import classes
from totalseg_train.compare import ComparisonError, compare_models, comparison_figure
from totalseg_train.config import compose_config
from totalseg_train.engine.datasets import part_datasets
from totalseg_train.engine.environment import nnunet_folders
from totalseg_train.engine.export import export_dataset
from totalseg_train.engine.pipeline import make_split
from totalseg_train.evaluate import score_pair
from totalseg_train.images import image_from_array, nifti_path, write_image
from totalseg_train.label_maps import read_label_map
from totalseg_train.outside_model import btcv_mapping, score_outside_model

BTCV = [c.name for c in classes.btcv_classes()]
SPACING = (2.0, 2.0, 3.0)  # x, y, z


def truth_map(seed: int, shape=(16, 20, 20)) -> np.ndarray:
    """A label map with boxes of five BTCV classes and one other class (lung), placed by ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for k, name in enumerate(["liver", "spleen", "kidney_left", "aorta", "esophagus", "lung_upper_lobe_left"]):
        z, y, x = 2 * k + 1, int(rng.integers(0, 10)), int(rng.integers(0, 10))
        labels[z:z + 3, y:y + 6, x:x + 6] = classes.id_of(name)
    return labels


def degraded(labels: np.ndarray, seed: int, share: float) -> np.ndarray:
    """The map with a ``share`` of its foreground voxels set to background."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    out[(labels > 0) & (rng.random(labels.shape) < share)] = 0
    return out


def scores_of(truths: dict[str, np.ndarray], predictions: dict[str, np.ndarray]) -> pd.DataFrame:
    tables = []
    for sid, truth in truths.items():
        table = score_pair(truth, predictions[sid], SPACING[::-1], 3.0)
        tables.append(table.assign(subject_id=sid))
    return pd.concat(tables, ignore_index=True)


def dice_by_hand(truth: np.ndarray, pred: np.ndarray, names: list[str]) -> float:
    """Mean Dice over the named classes present in the truth, computed here from the voxels."""
    values = []
    for name in names:
        t, p = truth == classes.id_of(name), pred == classes.id_of(name)
        if t.any():
            values.append(2 * (t & p).sum() / (t.sum() + p.sum()))
    return float(np.mean(values))


@pytest.fixture(scope="module")
def two_models():
    subjects = [f"s{i:04d}" for i in range(1, 9)]
    truths = {s: truth_map(i) for i, s in enumerate(subjects)}
    a = {s: degraded(t, 100 + i, 0.05) for i, (s, t) in enumerate(truths.items())}
    b = {s: degraded(t, 200 + i, 0.05 + 0.04 * i) for i, (s, t) in enumerate(truths.items())}
    return truths, a, b, scores_of(truths, a), scores_of(truths, b)


def test_per_subject_scores_and_the_wilcoxon_p_value_match_an_independent_computation(two_models):
    truths, a, b, scores_a, scores_b = two_models
    per_subject, summary = compare_models(scores_a, scores_b, BTCV)
    expected_a = [dice_by_hand(truths[s], a[s], BTCV) for s in sorted(truths)]
    expected_b = [dice_by_hand(truths[s], b[s], BTCV) for s in sorted(truths)]
    assert list(per_subject.columns) == ["subject_id", "a", "b", "difference"]
    assert list(per_subject.subject_id) == sorted(truths)
    np.testing.assert_allclose(per_subject.a, expected_a, atol=1e-9)
    np.testing.assert_allclose(per_subject.b, expected_b, atol=1e-9)
    np.testing.assert_allclose(per_subject.difference, np.subtract(expected_b, expected_a), atol=1e-9)
    reference = wilcoxon(expected_a, expected_b)
    assert summary["n_subjects"] == 8
    assert summary["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert summary["wilcoxon_statistic"] == pytest.approx(reference.statistic)
    assert summary["p_value"] < 0.05  # b loses more voxels in every subject
    assert summary["mean_a"] == pytest.approx(np.mean(expected_a))
    assert summary["mean_difference"] == pytest.approx(np.mean(expected_b) - np.mean(expected_a))
    # lung is scored by both models but is no BTCV class: it must not count
    assert summary["mean_a"] != pytest.approx(compare_models(scores_a, scores_b, [*BTCV, "lung_upper_lobe_left"])[1]["mean_a"])


def test_subjects_scored_by_one_model_only_are_named(two_models):
    _, _, _, scores_a, scores_b = two_models
    extra = scores_a[scores_a.subject_id == "s0001"].assign(subject_id="s0009")
    with pytest.raises(ComparisonError, match="only model a scored s0009; only model b scored s0003"):
        compare_models(pd.concat([scores_a[scores_a.subject_id != "s0003"], extra]), scores_b, BTCV)


def test_a_model_without_the_classes_or_with_other_ground_truth_is_refused(two_models):
    _, _, _, scores_a, scores_b = two_models
    with pytest.raises(ComparisonError, match="model b has no scores for class.*liver"):
        compare_models(scores_a, scores_b[scores_b.class_name != "liver"], BTCV)
    other_truth = scores_b.copy()
    other_truth.loc[(other_truth.subject_id == "s0002") & (other_truth.class_name == "spleen"), "gt_voxels"] += 1
    with pytest.raises(ComparisonError, match="different ground truth: s0002"):
        compare_models(scores_a, other_truth, BTCV)


def test_subjects_without_any_of_the_classes_are_listed_not_compared(two_models):
    _, _, _, scores_a, scores_b = two_models
    per_subject, summary = compare_models(scores_a, scores_b, ["lung_upper_lobe_left", "pancreas"], metric="nsd")
    assert summary["n_subjects"] == 8 and summary["subjects_without_classes"] == []
    per_subject, summary = compare_models(scores_a, scores_b, ["pancreas"])
    assert summary["n_subjects"] == 0 and len(summary["subjects_without_classes"]) == 8 and per_subject.empty


def test_the_paired_figure_draws_one_line_per_subject(two_models, tmp_path):
    _, _, _, scores_a, scores_b = two_models
    per_subject, summary = compare_models(scores_a, scores_b, BTCV)
    fig = comparison_figure(per_subject, "full", "narrow")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].lines) >= 8
    assert f"p = {summary['p_value']:.3g}" in fig._suptitle.get_text()
    fig.savefig(tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 10_000


def write_labels(folder: Path, sid: str, array: np.ndarray) -> None:
    write_image(image_from_array(array, SPACING, (0.0, 0.0, 0.0)), nifti_path(folder, sid))


def test_an_outside_models_btcv_ids_are_mapped_to_v1_and_scored_on_the_test_split(tmp_path):
    ws, truths = tmp_path / "ws", {f"s{i:04d}": truth_map(i) for i in range(1, 5)}
    to_btcv = np.zeros(256, np.uint8)
    for btcv_id, v1_id in btcv_mapping().items():
        to_btcv[v1_id] = btcv_id
    for sid, truth in truths.items():
        write_labels(ws / "labels", sid, truth)
        write_labels(tmp_path / "btcv_pred", sid, to_btcv[degraded(truth, 7, 0.1)])
    broken = to_btcv[truths["s0004"]].copy()
    broken[0, 0, 0] = 14  # BTCV has 13 classes
    write_labels(tmp_path / "btcv_pred", "s0004", broken)
    (ws / "nnunet").mkdir(parents=True)
    (ws / "nnunet" / "split.json").write_text(json.dumps(
        {"seed": 0, "holdout_test": True, "proportions": [1082, 57, 65], "train": ["s0001"], "val": [],
         "test": ["s0002", "s0003", "s0004"], "patients": {}}))
    cfg = compose_config("outside_model", [f"paths.workspace={ws}", f"pred_dir={tmp_path / 'btcv_pred'}",
                                           f"labels_dir={ws / 'labels'}", "workers=1", "progress=false"])
    record = score_outside_model(cfg)
    assert list(record["remap_failed"]) == ["s0004"]
    assert "s0004.nii.gz: label ids [14] are not in the mapping" in record["remap_failed"]["s0004"]
    out = ws / "results" / "btcv_nnunet"
    for sid in ("s0002", "s0003"):  # the test split's other subjects go on
        v1 = read_label_map(nifti_path(out / "predictions", sid)).array
        np.testing.assert_array_equal(v1, np.where(np.isin(degraded(truths[sid], 7, 0.1), classes.class_ids()) &
                                                   (to_btcv[degraded(truths[sid], 7, 0.1)] > 0),
                                                   degraded(truths[sid], 7, 0.1), 0))
    assert not nifti_path(out / "predictions", "s0001").exists()  # training subject: not scored
    scores = pd.read_parquet(out / "scores.parquet")
    assert sorted(scores.subject_id.unique()) == ["s0002", "s0003"]
    assert sorted(scores.class_name.unique()) == sorted(BTCV)  # lung is not a class the outside model has
    esophagus = scores[(scores.class_name == "esophagus") & (scores.subject_id == "s0002")].iloc[0]
    assert 0.8 < esophagus.dice < 1.0  # BTCV 5 -> v1 42, found with a tenth of its voxels lost
    mapping = pd.read_csv(out / "mapping.csv")
    assert dict(zip(mapping.source_id, mapping.v1_id)) == btcv_mapping() and len(mapping) == 13
    assert json.loads((out / "outside_model.json").read_text())["remap_failed"] == record["remap_failed"]


def test_a_mapping_file_maps_any_ids(tmp_path):
    truth = truth_map(3)
    write_labels(tmp_path / "labels", "s0001", truth)
    own = np.where(truth == classes.id_of("liver"), 200, np.where(truth == classes.id_of("aorta"), 7, 0)).astype(np.uint16)
    write_labels(tmp_path / "pred", "s0001", own)
    (tmp_path / "mapping.csv").write_text("source_id,v1_id\n200,5\n7,7\n9,\n")
    cfg = compose_config("outside_model", [f"paths.workspace={tmp_path}", f"pred_dir={tmp_path / 'pred'}",
                                           f"mapping={tmp_path / 'mapping.csv'}", "name=own", "subjects=[s0001]",
                                           f"labels_dir={tmp_path / 'labels'}", "workers=1", "progress=false"])
    record = score_outside_model(cfg)
    scores = pd.read_parquet(tmp_path / "results" / "own" / "scores.parquet").set_index("class_name")
    assert sorted(scores.index) == ["aorta", "liver"] and (scores.dice == 1.0).all()
    assert record["overall"]["dice"]["mean"] == 1.0


# The narrow experiment at nnU-Net's door: a curated-like cohort whose subjects.csv holds curation's columns.
COHORT = [  # subject, patient, site, contrast_phase, body_region
    ("s0001", "pat01", "site1", "portal_venous", "abdomen"),
    ("s0002", "pat01", "site1", "native", "abdomen"),
    ("s0003", "pat02", "site1", "portal_venous", "thorax_abdomen"),
    ("s0004", "pat03", "site2", "portal_venous", "abdomen"),
    ("s0005", "pat04", "site1", "arterial", "abdomen"),
    ("s0006", "pat05", "site1", "portal_venous", "thorax"),
    ("s0007", "pat06", "site1", "portal_venous", "abdomen"),
    ("s0008", "pat07", "site1", "portal_venous", "abdomen"),
    ("s0009", "pat08", "site3", "late", "whole_body"),
    ("s0010", "pat09", "site1", "portal_venous", "abdomen"),
    ("s0011", "pat10", "site1", "portal_venous", "abdomen"),
    ("s0012", "pat11", "site2", "native", "thorax"),
]


@pytest.fixture(scope="module")
def curated_like(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("narrow_ws")
    rows = []
    for i, (sid, patient, site, phase, region) in enumerate(COHORT):
        labels = truth_map(i)
        write_labels(ws / "labels", sid, labels)
        write_image(image_from_array(np.where(labels > 0, 60, -100).astype(np.int16), SPACING, (0.0, 0.0, 0.0)),
                    nifti_path(ws / "curated" / "images", sid))
        rows.append({"subject_id": sid, "patient": patient, "site": site, "contrast_phase": phase,
                     "body_region": region, "sex": "F"})
    pd.DataFrame(rows).to_csv(ws / "curated" / "subjects.csv", index=False)
    return ws


def test_narrow_trains_on_the_selected_subjects_and_the_13_btcv_classes_and_keeps_the_full_test_split(curated_like):
    ws = curated_like
    common = [f"paths.workspace={ws}", f"labels_dir={ws / 'labels'}", "workers=1"]
    full = make_split(compose_config("train", ["+experiment=tiny", *common]))
    cfg = compose_config("train", ["+experiment=narrow", *common])
    narrow = make_split(cfg)
    assert narrow.test == full.test and len(full.test) == 1  # scored on the same subjects as the full model
    selected = {sid for sid, _, site, phase, region in COHORT
                if site == "site1" and phase == "portal_venous" and region in ("abdomen", "thorax_abdomen")}
    test_patients = {p for sid, p, *_ in COHORT if sid in full.test}
    expected = {sid for sid, p, *_ in COHORT if sid in selected and p not in test_patients}
    assert set(narrow.train + narrow.val) == expected and narrow.val and not set(narrow.train) & set(narrow.val)
    assert (ws / "nnunet" / "split_narrow.json").is_file()

    dataset = part_datasets(cfg)[0]
    table = export_dataset(dataset, sorted(narrow.train + narrow.val), cfg.images_dir, cfg.labels_dir,
                           nnunet_folders(cfg)["nnUNet_raw"], workers=1, progress=False)
    assert sorted(table.subject_id) == sorted(expected) and (table.status == "exported").all()
    folder = nnunet_folders(cfg)["nnUNet_raw"] / dataset.name
    doc = json.loads((folder / "dataset.json").read_text())
    assert dataset.name == "Dataset330_narrow_btcv" and doc["numTraining"] == len(expected)
    assert list(doc["labels"]) == ["background", *BTCV] and doc["v1_class_ids"] == [c.id for c in classes.btcv_classes()]
    exported = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert exported == sorted(f"{s}.nii.gz" for s in expected)
    sid = sorted(expected)[0]
    local = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{sid}.nii.gz")))
    truth = truth_map([c[0] for c in COHORT].index(sid))
    assert set(np.unique(local)) == {0, 1, 3, 5, 7, 13}  # spleen, kidney_left, liver, aorta, esophagus; lung gone
    assert (local[truth == classes.id_of("esophagus")] == 13).all()


def test_a_selection_that_leaves_too_few_patients_or_names_no_column_is_an_error(curated_like):
    ws = curated_like
    common = [f"paths.workspace={ws}", f"labels_dir={ws / 'labels'}", "+experiment=narrow",
              f"subjects.split_file={ws / 'other_split.json'}"]
    with pytest.raises(ValueError, match="leaves 1 labelled subject"):
        make_split(compose_config("train", [*common, "subjects.where.site=site2", "subjects.where.body_region=abdomen"]))
    with pytest.raises(ValueError, match="has no column.*scanner_room"):
        make_split(compose_config("train", [*common, "+subjects.where.scanner_room=3"]))


def test_narrows_default_selection_names_columns_curation_writes():
    from data_prep.curate.pipeline import SUBJECT_COLUMNS

    for experiment in ("narrow", "narrow_tiny"):
        where = compose_config("train", [f"+experiment={experiment}"]).subjects.where
        assert set(where) <= set(SUBJECT_COLUMNS) and where.contrast_phase == "portal_venous"

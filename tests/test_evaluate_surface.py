"""Dice and NSD against the oracle: DeepMind's surface-distance in the paper's per-class loop."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from surface_distance import lookup_tables

from totalseg_train import classes
from totalseg_train.evaluate import score_pair, surface_dice
from totalseg_train.evaluate.bench import GT_FILE, PRED_FILE, example_label_map
from totalseg_train.evaluate.reference import reference_scores
from totalseg_train.evaluate.surface import surfel_area_table, tolerance_offsets

# surface-distance still imports from scipy's deprecated ndimage.filters / ndimage.morphology namespaces.
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")

CLASS_POOL = (1, 2, 5, 18, 58, 104)


def assert_matches_reference(gt, pred, spacing, tolerance_mm):
    ours = score_pair(gt, pred, spacing, tolerance_mm).set_index("class_id")
    reference = reference_scores(gt, pred, spacing, tolerance_mm)
    assert len(ours) == len(reference) == 104
    for class_id, (dice, nsd) in reference.items():
        for metric, expected in (("dice", dice), ("nsd", nsd)):
            got = ours.at[class_id, metric]
            assert np.isnan(got) == np.isnan(expected), (class_id, metric, got, expected)
            if not np.isnan(expected):
                assert abs(got - expected) <= 1e-6, (class_id, metric, got, expected)
    return ours


def random_label_map(rng, shape, class_ids, smoothing):
    """Blobs of a few classes (smoothed noise cut at quantiles) or, unsmoothed, salt-and-pepper labels."""
    noise = rng.random(shape)
    if smoothing:
        noise = ndimage.uniform_filter(noise, size=smoothing, mode="nearest")
    edges = np.quantile(noise, np.linspace(0, 1, len(class_ids) + 2)[1:-1])
    labels = np.array((0, *class_ids), dtype=np.uint8)[np.digitize(noise, edges)]
    return labels


def perturbed(rng, labels, class_ids):
    """A plausible prediction: shifted, with flipped voxels, one class dropped and one added."""
    pred = np.roll(labels, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    flip = rng.random(labels.shape) < rng.uniform(0, 0.15)
    pred[flip] = rng.choice(np.array((0, *class_ids), dtype=np.uint8), size=int(flip.sum()))
    if rng.random() < 0.5:
        pred[pred == class_ids[0]] = 0
    if rng.random() < 0.5:
        extra = [c for c in CLASS_POOL if c not in class_ids][0]
        pred[tuple(rng.integers(0, n) for n in labels.shape)] = extra
    return pred


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(*[st.integers(1, 14)] * 3),
    spacing=st.tuples(*[st.floats(0.3, 3.5, allow_nan=False)] * 3),
    tolerance_mm=st.one_of(st.sampled_from([0.0, 1.0, 1.5, 3.0]), st.floats(0.0, 6.0, allow_nan=False)),
    n_classes=st.integers(1, 4),
    smoothing=st.sampled_from([0, 3, 5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_label_maps_match_the_reference(shape, spacing, tolerance_mm, n_classes, smoothing, seed):
    rng = np.random.default_rng(seed)
    class_ids = tuple(int(c) for c in rng.choice(CLASS_POOL, size=n_classes, replace=False))
    gt = random_label_map(rng, shape, class_ids, smoothing)
    assert_matches_reference(gt, perturbed(rng, gt, class_ids), spacing, tolerance_mm)


@settings(max_examples=60, deadline=None)
@given(
    spacing=st.sampled_from([(1.5, 1.5, 1.5), (3.0, 3.0, 3.0), (1.0, 1.0, 1.0), (2.5, 0.8, 0.8)]),
    shift=st.tuples(*[st.integers(-3, 3)] * 3),
)
def test_surfels_exactly_at_the_tolerance_count_as_the_reference_counts_them(spacing, shift):
    # A box and the same box shifted by whole voxels: many surfels lie exactly at 1 or 2 voxels' distance.
    gt = np.zeros((12, 12, 12), np.uint8)
    gt[3:8, 4:9, 2:7] = 7
    pred = np.roll(gt, shift, axis=(0, 1, 2))
    for tolerance_mm in (spacing[0], 2 * spacing[1], 3.0):
        assert_matches_reference(gt, pred, spacing, tolerance_mm)


def test_structures_touching_the_volume_border_have_a_surface_there():
    full = np.full((5, 6, 7), 3, np.uint8)  # the whole volume: its only surface is the volume's border
    corner = np.zeros((5, 6, 7), np.uint8)
    corner[0, 0, 0] = 3
    corner[-1, -1, -1] = 3
    for pred in (full, corner, np.roll(full, 1, axis=2) * (np.arange(7) > 1)):
        scores = assert_matches_reference(full, pred.astype(np.uint8), (1.0, 2.0, 0.7), 1.0)
        assert scores.at[3, "nsd"] <= 1.0


def test_paper_conventions_absent_classes_and_false_positives():
    gt = np.zeros((8, 8, 8), np.uint8)
    gt[1:4, 1:4, 1:4] = 1  # predicted correctly
    gt[5:7, 5:7, 5:7] = 2  # missed by the prediction
    pred = np.zeros_like(gt)
    pred[1:4, 1:4, 1:4] = 1
    pred[6, 1, 6] = 3  # not in the ground truth
    scores = assert_matches_reference(gt, pred, (1.5, 1.5, 1.5), 3.0)
    assert scores.at[1, "dice"] == 1.0 and scores.at[1, "nsd"] == 1.0
    assert scores.at[2, "dice"] == 0.0 and scores.at[2, "nsd"] == 0.0
    assert np.isnan(scores.at[3, "dice"]) and np.isnan(scores.at[3, "nsd"])
    assert scores.at[3, "false_positive"] and not scores.at[1, "false_positive"]
    assert scores["gt_present"].sum() == 2 and scores["false_positive"].sum() == 1
    assert scores.at[1, "gt_voxels"] == 27 and scores.at[3, "pred_voxels"] == 1
    assert np.isnan(scores.drop(index=[1, 2, 3])[["dice", "nsd"]].to_numpy()).all()


def test_where_a_classs_voxels_went_names_the_other_class_predicted_on_most_of_them():
    l1, l2, l3 = (classes.id_of(f"vertebrae_L{i}") for i in (1, 2, 3))
    gt = np.zeros((12, 6, 6), np.uint8)
    gt[0:4], gt[4:8], gt[8:12] = l1, l2, l3
    pred = gt.copy()
    pred[0:4] = l2            # L1 labelled as its neighbour L2, wholly
    pred[8, 0, 0] = l2        # L3: one voxel to L2,
    pred[9, 0, :2] = 0        # two to the background (not a confusion)
    scores = score_pair(gt, pred, (1.0, 1.0, 1.0), 1.0).set_index("class_name")
    assert scores.at["vertebrae_L1", "confused_with"] == l2 and scores.at["vertebrae_L1", "confused_voxels"] == 144
    assert scores.at["vertebrae_L1", "intersection_voxels"] == 0
    assert scores.at["vertebrae_L2", "confused_with"] == 0 and scores.at["vertebrae_L2", "confused_voxels"] == 0
    assert scores.at["vertebrae_L3", "confused_with"] == l2 and scores.at["vertebrae_L3", "confused_voxels"] == 1
    assert (scores.loc[~scores.gt_present, ["confused_with", "confused_voxels"]] == 0).all().all()


def test_empty_label_maps_give_only_nan():
    empty = np.zeros((4, 5, 6), np.uint8)
    scores = score_pair(empty, empty, (1.0, 1.0, 1.0), 3.0)
    assert scores["dice"].isna().all() and scores["nsd"].isna().all() and not scores["false_positive"].any()


def test_label_ids_outside_the_class_table_are_rejected_and_integral_floats_accepted():
    gt = np.zeros((4, 5, 6), np.int16)
    gt[1:3, 1:3, 1:3] = 104
    pred = gt.copy()
    pred[0, 0, 0], pred[0, 0, 1] = 105, -1
    with pytest.raises(ValueError, match=r"prediction: label ids outside the class table.*\[-1, 105\]"):
        score_pair(gt, pred, (1.0, 1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match=r"ground truth: .*2\.5"):
        score_pair(np.full((2, 2, 2), 2.5), gt[:2, :2, :2], (1.0, 1.0, 1.0), 1.0)
    scores = score_pair(gt.astype(np.float32), gt, (1.0, 1.0, 1.0), 1.0).set_index("class_id")
    assert scores.at[104, "dice"] == 1.0 and scores.at[104, "gt_voxels"] == 8


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (2.5, 0.7, 1.3)])
def test_surfel_areas_equal_the_reference_table(spacing):
    expected = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(surfel_area_table(spacing), expected, rtol=1e-12, atol=0)


def test_tolerance_offsets_are_the_lattice_points_within_the_ellipsoid():
    offsets = tolerance_offsets((1.5, 1.5, 1.5), 3.0)
    assert len(offsets) == 33  # |d|^2 <= 4: 1 + 6 + 12 + 8 + 6
    assert offsets[0].tolist() == [0, 0, 0]
    assert len(tolerance_offsets((3.0, 3.0, 3.0), 3.0)) == 7
    assert len(tolerance_offsets((1.0, 1.0, 1.0), 0.0)) == 1
    with pytest.raises(ValueError, match="tolerance"):
        tolerance_offsets((1.0, 1.0, 1.0), -1.0)


def test_surface_dice_on_a_crop_equals_the_full_volume():
    rng = np.random.default_rng(3)
    gt = random_label_map(rng, (20, 22, 24), (1,), 5) == 1
    gt[:6] = gt[-6:] = False
    pred = np.roll(gt, 1, axis=1)
    full = surface_dice(gt, pred, (1.2, 0.9, 2.0), 2.0)
    crop = surface_dice(gt[5:-5], pred[5:-5], (1.2, 0.9, 2.0), 2.0)
    assert full == pytest.approx(crop, abs=1e-12)
    assert 0 < full < 1


@pytest.fixture(scope="module")
def example_pair(shared_dir):
    folder = shared_dir / "data" / "ct_example"
    return folder / GT_FILE, folder / PRED_FILE


@pytest.mark.parametrize("spacing_mm", [None, 1.5])
def test_real_label_maps_match_the_reference(example_pair, spacing_mm):
    gt_image, pred_image = (example_label_map(p, spacing_mm) for p in example_pair)
    assert gt_image.GetSpacing() == pred_image.GetSpacing() == ((3.0,) * 3 if spacing_mm is None else (1.5,) * 3)
    gt, pred = sitk.GetArrayFromImage(gt_image), sitk.GetArrayFromImage(pred_image)
    spacing = tuple(reversed(gt_image.GetSpacing()))
    scores = assert_matches_reference(gt, pred, spacing, 3.0)
    # Two real models' predictions of the same CT: ~40 classes, mostly good agreement, a few misses.
    assert scores["gt_present"].sum() >= 35
    assert scores["nsd"].median() > 0.8 and scores["dice"].median() > 0.7


def test_real_label_maps_with_anisotropic_spacing_match_the_reference(example_pair):
    gt, pred = (sitk.GetArrayFromImage(example_label_map(p)) for p in example_pair)
    assert_matches_reference(gt, pred, (2.5, 0.8, 0.8), 2.0)

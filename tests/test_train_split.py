"""The patient-level split: the paper's exact counts, proportions of small cohorts, determinism, reuse."""

import json

import numpy as np
import pytest

from totalseg_train.config import compose_config
from totalseg_train.engine.split import (SplitConflict, SplitSettings, draw_split, load_or_create_split, read_split,
                                         split_counts)

PAPER = SplitSettings(train=1082, val=57, test=65, holdout_test=True, seed=0)


def synthetic_cohort(n_subjects: int, seed: int = 1) -> dict[str, str]:
    """subject -> patient, most patients with one exam, some with two or three (as in a hospital cohort)."""
    rng = np.random.default_rng(seed)
    patient_of, patient = {}, 0
    while len(patient_of) < n_subjects:
        exams = min(int(rng.choice([1, 1, 1, 1, 2, 3])), n_subjects - len(patient_of))
        for _ in range(exams):
            patient_of[f"s{len(patient_of):04d}"] = f"pat{patient:04d}"
        patient += 1
    return patient_of


def assert_patient_level(split, patient_of):
    groups = {}
    for group in ("train", "val", "test"):
        for sid in getattr(split, group):
            groups.setdefault(patient_of[sid], set()).add(group)
    assert all(len(g) == 1 for g in groups.values())


def test_the_paper_cohort_splits_exactly_1082_57_65_by_patient():
    cohort = synthetic_cohort(1204)
    assert len(set(cohort.values())) < 1204  # several exams per patient exist
    split = draw_split(cohort, PAPER)
    assert split.counts() == {"train": 1082, "val": 57, "test": 65}
    assert sorted(split.train + split.val + split.test) == sorted(cohort)
    assert_patient_level(split, cohort)


def test_the_split_is_seeded():
    cohort = synthetic_cohort(1204)
    assert draw_split(cohort, PAPER) == draw_split(dict(reversed(list(cohort.items()))), PAPER)
    other = draw_split(cohort, SplitSettings(1082, 57, 65, True, seed=1))
    assert set(other.test) != set(draw_split(cohort, PAPER).test)


@pytest.mark.parametrize("n", [3, 5, 7, 20, 100, 301])
def test_small_cohorts_keep_the_proportions_with_one_validation_and_one_test_subject(n):
    cohort = {f"s{i:03d}": f"pat{i:03d}" for i in range(n)}
    split = draw_split(cohort, PAPER)
    counts = split.counts()
    assert counts["val"] >= 1 and counts["test"] >= 1 and sum(counts.values()) == n
    assert counts["test"] == max(1, round(n * 65 / 1204)) and counts["val"] == max(1, round(n * 57 / 1204))


def test_without_a_test_split_train_and_validation_take_every_subject():
    cohort = {f"s{i:02d}": f"pat{i:02d}" for i in range(20)}
    split = draw_split(cohort, SplitSettings(1082, 57, 65, holdout_test=False, seed=0))
    assert split.test == () and split.counts() == {"train": 19, "val": 1, "test": 0}
    assert split.nnunet_splits() == [{"train": sorted(split.train), "val": sorted(split.val)}]


def test_too_few_patients_is_an_error():
    with pytest.raises(ValueError, match="at least 3 patients"):
        draw_split({"s1": "p1", "s2": "p1", "s3": "p2"}, PAPER)
    assert split_counts(2, SplitSettings(1082, 57, 65, False, 0)) == (1, 1, 0)


def test_the_split_is_written_once_and_reused(tmp_path):
    path = tmp_path / "split.json"
    cohort = synthetic_cohort(60)
    first = load_or_create_split(path, cohort, PAPER)
    stored = json.loads(path.read_text())
    assert stored["seed"] == 0 and len(stored["test"]) == first.counts()["test"]
    mtime = path.stat().st_mtime_ns
    assert load_or_create_split(path, cohort, PAPER) == first == read_split(path)
    assert path.stat().st_mtime_ns == mtime


def test_a_new_exam_of_a_known_patient_joins_its_patients_split(tmp_path):
    path = tmp_path / "split.json"
    cohort = synthetic_cohort(60)
    first = load_or_create_split(path, cohort, PAPER)
    test_patient = cohort[first.test[0]]
    grown = {**cohort, "s9999": test_patient}
    second = load_or_create_split(path, grown, PAPER)
    assert "s9999" in second.test and set(first.train) == set(second.train)
    assert "s9999" in read_split(path).test


@pytest.mark.parametrize("change, message", [
    ("new_patient", "not in"),
    ("removed", "no longer in the cohort"),
    ("moved", "more than one split"),
    ("seed", "drawn with"),
])
def test_conflicting_changes_are_errors_never_a_silent_redraw(tmp_path, change, message):
    path = tmp_path / "split.json"
    cohort = synthetic_cohort(60)
    first = load_or_create_split(path, cohort, PAPER)
    settings = PAPER
    if change == "new_patient":
        cohort = {**cohort, "s9999": "pat9999"}
    elif change == "removed":
        cohort = {k: v for k, v in cohort.items() if k != first.train[0]}
    elif change == "moved":  # a training subject now belongs to the test patient
        cohort = {**cohort, first.train[0]: cohort[first.test[0]]}
    else:
        settings = SplitSettings(1082, 57, 65, True, seed=7)
    before = path.read_text()
    with pytest.raises(SplitConflict, match=message):
        load_or_create_split(path, cohort, settings)
    assert path.read_text() == before


def test_split_settings_come_from_the_train_config():
    cfg = compose_config("train", ["+experiment=tiny"])
    assert SplitSettings.from_config(cfg.split) == PAPER

"""The patient-level train / validation / test split: drawn once (seeded), written, then reused.

Several exams of one patient never cross splits. With the paper's 1204 subjects the split is exactly
1082 / 57 / 65; smaller cohorts keep the proportions with at least one validation and (when a test split
is held out) one test subject. A stored split is never silently re-drawn: a run with a changed cohort
either extends it without conflict (new exams of known patients join their patient's split) or stops
with an error that says what changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from totalseg_train.atomic import write_text

GROUPS = ("train", "val", "test")


class SplitConflict(RuntimeError):
    """The stored split does not fit the current cohort or split settings."""


@dataclass(frozen=True)
class SplitSettings:
    train: int
    val: int
    test: int
    holdout_test: bool
    seed: int

    @classmethod
    def from_config(cls, split_cfg) -> "SplitSettings":
        return cls(int(split_cfg.train), int(split_cfg.val), int(split_cfg.test),
                   bool(split_cfg.holdout_test), int(split_cfg.seed))


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    settings: SplitSettings

    def group_of(self) -> dict[str, str]:
        return {sid: group for group in GROUPS for sid in getattr(self, group)}

    def counts(self) -> dict[str, int]:
        return {group: len(getattr(self, group)) for group in GROUPS}

    def nnunet_splits(self) -> list[dict[str, list[str]]]:
        """nnU-Net's splits_final.json: train/validation as fold 0 (the test split is not part of it)."""
        return [{"train": sorted(self.train), "val": sorted(self.val)}]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_counts(n_subjects: int, settings: SplitSettings) -> tuple[int, int, int]:
    """Subjects per split for a cohort of ``n_subjects``, in the configured proportions."""
    if settings.holdout_test:
        total = settings.train + settings.val + settings.test
        n_test = max(1, _round_half_up(n_subjects * settings.test / total))
    else:
        total = settings.train + settings.val
        n_test = 0
    n_val = max(1, _round_half_up(n_subjects * settings.val / total))
    n_train = n_subjects - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n_subjects} subjects are too few for a train/validation"
                         f"{'/test' if settings.holdout_test else ''} split")
    return n_train, n_val, n_test


def _fill(order: list[str], sizes: Mapping[str, int], target: int) -> list[str]:
    """Patients (in ``order``) whose subjects add up to ``target`` as closely as possible from below;
    at least one patient even when none fits."""
    chosen, remaining = [], target
    for patient in order:
        if sizes[patient] <= remaining:
            chosen.append(patient)
            remaining -= sizes[patient]
        if remaining == 0:
            break
    if not chosen and order:
        chosen.append(min(order, key=lambda p: sizes[p]))
    return chosen


def draw_split(patient_of: Mapping[str, str], settings: SplitSettings) -> Split:
    """Draw a patient-level split of the subjects (subject_id -> patient), reproducibly from the seed."""
    subjects_of: dict[str, list[str]] = {}
    for sid, patient in sorted(patient_of.items()):
        subjects_of.setdefault(patient, []).append(sid)
    needed = 3 if settings.holdout_test else 2
    if len(subjects_of) < needed:
        raise ValueError(f"a patient-level split needs at least {needed} patients; the cohort has "
                         f"{len(subjects_of)} ({len(patient_of)} subjects)")
    _, n_val, n_test = split_counts(len(patient_of), settings)
    sizes = {p: len(s) for p, s in subjects_of.items()}
    rng = np.random.default_rng(settings.seed)
    order = [str(p) for p in rng.permutation(sorted(subjects_of))]
    test = _fill(order, sizes, n_test) if settings.holdout_test else []
    order = [p for p in order if p not in test]
    val = _fill(order, sizes, n_val)
    train = [p for p in order if p not in val]
    if not train:
        raise ValueError(f"{len(subjects_of)} patients leave none for training")

    def subjects(patients: list[str]) -> tuple[str, ...]:
        return tuple(sorted(s for p in patients for s in subjects_of[p]))

    return Split(subjects(train), subjects(val), subjects(test), settings)


def reconcile(stored: Split, patient_of: Mapping[str, str], settings: SplitSettings, source: Path) -> Split:
    """The stored split, extended by new exams of known patients; SplitConflict for anything else."""
    hint = f"delete {source} to draw a new split, or point split.file elsewhere"
    if stored.settings != settings:
        raise SplitConflict(f"{source} was drawn with {stored.settings}, the config asks for {settings}; {hint}")
    group = stored.group_of()
    removed = sorted(set(group) - set(patient_of))
    if removed:
        raise SplitConflict(f"{source} holds {len(removed)} subjects that are no longer in the cohort "
                            f"({', '.join(removed[:5])}{' ...' if len(removed) > 5 else ''}); {hint}")
    patient_groups: dict[str, set[str]] = {}
    for sid, g in group.items():
        patient_groups.setdefault(patient_of[sid], set()).add(g)
    crossing = sorted(p for p, groups in patient_groups.items() if len(groups) > 1)
    if crossing:
        raise SplitConflict(f"patients {', '.join(crossing)} now have subjects in more than one split of "
                            f"{source} (subjects.csv changed their patient); {hint}")
    added = sorted(set(patient_of) - set(group))
    unknown = sorted({patient_of[s] for s in added if patient_of[s] not in patient_groups})
    if unknown:
        raise SplitConflict(f"{len(added)} new subjects, of {len(unknown)} patients not in {source} "
                            f"({', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}); {hint}")
    for sid in added:
        group[sid] = next(iter(patient_groups[patient_of[sid]]))
    members = {g: tuple(sorted(s for s, gg in group.items() if gg == g)) for g in GROUPS}
    return Split(members["train"], members["val"], members["test"], settings)


def split_to_json(split: Split, patient_of: Mapping[str, str]) -> str:
    s = split.settings
    doc = {
        "seed": s.seed, "holdout_test": s.holdout_test, "proportions": [s.train, s.val, s.test],
        **{g: list(getattr(split, g)) for g in GROUPS},
        "patients": {sid: patient_of[sid] for sid in sorted(split.group_of())},
    }
    return json.dumps(doc, indent=1) + "\n"


def read_split(path: Path) -> Split:
    doc = json.loads(Path(path).read_text())
    train, val, test = doc["proportions"]
    settings = SplitSettings(train, val, test, bool(doc["holdout_test"]), int(doc["seed"]))
    return Split(tuple(doc["train"]), tuple(doc["val"]), tuple(doc["test"]), settings)


def load_or_create_split(path: str | Path, patient_of: Mapping[str, str], settings: SplitSettings) -> Split:
    """Reuse the split stored at ``path`` (extended where that is safe), or draw and store a new one."""
    path = Path(path)
    if path.exists():
        stored = read_split(path)
        split = reconcile(stored, patient_of, settings, path)
        if split != stored:
            write_text(path, split_to_json(split, patient_of))
        return split
    split = draw_split(patient_of, settings)
    write_text(path, split_to_json(split, patient_of))
    return split

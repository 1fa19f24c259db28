"""The 104 anatomical classes of the TotalSegmentator paper (v1 label map).

This module is the single owner of every class fact: ids, names, the high-resolution part
model that segments a class, its category, its BTCV id, the heart sub-part flag and the id
of the same class in the later v2 ``total`` map. Other modules ask this one; none of them
keeps a class list of its own.

A model is trained on one of the high-resolution parts (``PARTS``, the table's ``part`` column) or on
a subset that a column of the table selects (``SUBSETS``: the heart sub-parts, the 13 BTCV classes); both are "parts" to
the training engine (``model_parts``, ``part_classes``).
"""

from __future__ import annotations

import colorsys
import csv
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

PARTS: tuple[str, ...] = ("organs", "vertebrae", "cardiac", "muscles", "ribs")
CATEGORIES: tuple[str, ...] = ("organ", "bone", "muscle", "vessel")
BACKGROUND = 0


@dataclass(frozen=True)
class AnatomicalClass:
    id: int
    name: str
    part: str
    category: str
    btcv_id: int | None
    v2_total_id: int | None
    heart_subpart: bool

    @property
    def side(self) -> str | None:
        """'left' or 'right' for paired structures, else None."""
        for side in ("left", "right"):
            if f"_{side}" in self.name:
                return side
        return None

    @property
    def mirror_name(self) -> str | None:
        """Name of the contralateral class (kidney_left -> kidney_right), None if unpaired."""
        if self.side is None:
            return None
        other = "right" if self.side == "left" else "left"
        return self.name.replace(f"_{self.side}", f"_{other}")


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


@lru_cache(maxsize=1)
def all_classes() -> tuple[AnatomicalClass, ...]:
    """All 104 classes ordered by id."""
    with resources.files("totalseg_train").joinpath("data/classes_v1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    classes = tuple(
        AnatomicalClass(
            id=int(r["id"]),
            name=r["name"],
            part=r["part"],
            category=r["category"],
            btcv_id=_optional_int(r["btcv_id"]),
            v2_total_id=_optional_int(r["v2_total_id"]),
            heart_subpart=r["heart_subpart"] == "1",
        )
        for r in rows
    )
    return tuple(sorted(classes, key=lambda c: c.id))


@lru_cache(maxsize=1)
def _by_id() -> dict[int, AnatomicalClass]:
    return {c.id: c for c in all_classes()}


@lru_cache(maxsize=1)
def _by_name() -> dict[str, AnatomicalClass]:
    return {c.name: c for c in all_classes()}


def num_classes() -> int:
    return len(all_classes())


def class_ids() -> list[int]:
    return [c.id for c in all_classes()]


def class_names() -> list[str]:
    return [c.name for c in all_classes()]


def by_id(class_id: int) -> AnatomicalClass:
    try:
        return _by_id()[int(class_id)]
    except KeyError:
        raise KeyError(f"unknown class id {class_id}; valid ids are 1..{num_classes()}") from None


def by_name(name: str) -> AnatomicalClass:
    try:
        return _by_name()[name]
    except KeyError:
        raise KeyError(f"unknown class name {name!r}") from None


def id_of(name: str) -> int:
    return by_name(name).id


def in_part(part: str) -> list[AnatomicalClass]:
    if part not in PARTS:
        raise KeyError(f"unknown part {part!r}; parts are {', '.join(PARTS)}")
    return [c for c in all_classes() if c.part == part]


def in_category(category: str) -> list[AnatomicalClass]:
    if category not in CATEGORIES:
        raise KeyError(f"unknown category {category!r}; categories are {', '.join(CATEGORIES)}")
    return [c for c in all_classes() if c.category == category]


def heart_subparts() -> list[AnatomicalClass]:
    return [c for c in all_classes() if c.heart_subpart]


def btcv_classes() -> list[AnatomicalClass]:
    return [c for c in all_classes() if c.btcv_id is not None]


def by_v2_total_id(v2_id: int) -> AnatomicalClass | None:
    """The v1 class whose v2 ``total`` id is ``v2_id``; None where v1 has no such class."""
    return {c.v2_total_id: c for c in all_classes() if c.v2_total_id is not None}.get(int(v2_id))


def vertebrae_cranio_caudal() -> list[AnatomicalClass]:
    """Vertebrae C1..L5, head first."""
    order = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    return [by_name(f"vertebrae_{v}") for v in order]


def ribs(side: str) -> list[AnatomicalClass]:
    """Ribs 1..12 of one side, cranial first."""
    return [by_name(f"rib_{side}_{i}") for i in range(1, 13)]


# Class subsets a model can train on like a part, each selected by a column of the class table; a
# subset is one line here.
SUBSETS: dict[str, Callable[[], list[AnatomicalClass]]] = {
    "heart": heart_subparts,
    "btcv": btcv_classes,
}


def model_parts() -> tuple[str, ...]:
    """Every name a part model can have: the five parts, then the subsets."""
    return PARTS + tuple(SUBSETS)


def part_classes(part: str) -> list[AnatomicalClass]:
    """The classes of a part or a subset, ordered by id."""
    if part in SUBSETS:
        return SUBSETS[part]()
    if part not in PARTS:
        raise KeyError(f"unknown part {part!r}; parts are {', '.join(model_parts())}")
    return in_part(part)


def part_local_ids(part: str) -> dict[int, int]:
    """Global id -> label id inside a part model (1..n in global-id order); parts and subsets alike."""
    return {c.id: i for i, c in enumerate(part_classes(part), start=1)}


def v2_to_v1_lut() -> np.ndarray:
    """Lookup array mapping v2 ``total`` ids to v1 ids (0 where v1 has no such class)."""
    size = max(c.v2_total_id or 0 for c in all_classes()) + 1
    lut = np.zeros(max(size, 256), dtype=np.uint8)
    for c in all_classes():
        if c.v2_total_id is not None:
            lut[c.v2_total_id] = c.id
    return lut


def map_v2_to_v1(labels_v2: np.ndarray) -> np.ndarray:
    """Convert a v2 ``total`` label map to the 104-class v1 ids by class name."""
    lut = v2_to_v1_lut()
    if labels_v2.size and int(labels_v2.max()) >= lut.size:
        raise ValueError(f"label id {int(labels_v2.max())} is beyond the v2 total map")
    return lut[labels_v2]


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A fixed RGB colour per class, the same in every render and label table.

    Hues step by the golden ratio so that neighbouring ids differ; bones are paler so that
    organs and vessels stand out in front of the skeleton in a 3D render.
    """
    cls = by_id(class_id)
    hue = (cls.id * 0.618033988749895) % 1.0
    sat = {"bone": 0.30, "muscle": 0.55, "organ": 0.70, "vessel": 0.85}[cls.category]
    val = 0.95 - 0.15 * (cls.id % 3) / 2
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (round(r * 255), round(g * 255), round(b * 255))

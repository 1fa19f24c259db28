"""Seeded errors planted on clean label maps: what annotators and models really get wrong.

Used by the QA-flag benchmark (``annotation_loop.qa.flag_bench``) and the tests to measure how many
planted errors the flags find on the right class, never by a pipeline stage. Every function works on
an array (z, y, x) of v1 class ids and its voxel spacing; it returns a new array and what it planted,
or None when the map holds no class the error can be planted on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from totalseg_train import classes


@dataclass(frozen=True)
class PlantSettings:
    min_ml: float = 5.0          # classes smaller than this are not planted on (a voxel or two at a coarse grid)
    split_pieces: int = 4        # a split class falls into this many pieces...
    split_gap_mm: float = 8.0    # ...separated by gaps this wide, each piece at least
    split_min_piece_ml: float = 1.0  # ...this big (the QA measurements' smallest counted component)
    stray_ml: float = 4.0        # a stray piece's volume
    stray_far_mm: float = 80.0   # a stray piece inside the body lies at least this far from its class
    stray_outside_mm: float = 80.0  # a stray piece outside the body lies this far from every label
    grow_mm: float = 6.0         # grown / shrunk by this margin
    cut_fraction: float = 0.5    # a cut-off class keeps this share of its head-foot extent


@dataclass(frozen=True)
class PlantedError:
    kind: str
    classes: tuple[str, ...]  # a flag naming any of these has found the error
    description: str


def _volumes(labels: np.ndarray, spacing_zyx) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=classes.num_classes() + 1) * float(np.prod(spacing_zyx)) / 1000.0


def _whole(labels: np.ndarray) -> set[int]:
    """Class ids that do not touch the border of the array (not cut by the scan)."""
    border = np.zeros(labels.shape, bool)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    return set(np.unique(labels)) - set(np.unique(labels[border]))


def candidates(labels: np.ndarray, spacing_zyx, settings: PlantSettings) -> list[int]:
    """Whole classes of at least ``settings.min_ml``, the ones errors are planted on."""
    volumes = _volumes(labels, spacing_zyx)
    return sorted(c for c in _whole(labels) if c > 0 and volumes[c] >= settings.min_ml)


def _name(class_id: int) -> str:
    return classes.by_id(class_id).name


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.asarray(radius_vox, float), 0.5)
    n = np.ceil(r).astype(int)
    z, y, x = np.ogrid[-n[0]:n[0] + 1, -n[1]:n[1] + 1, -n[2]:n[2] + 1]
    return (z / r[0]) ** 2 + (y / r[1]) ** 2 + (x / r[2]) ** 2 <= 1.0


def _blob_at(labels: np.ndarray, centre, class_id: int, ml: float, spacing_zyx) -> np.ndarray:
    radius_mm = (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    ball = _ball(radius_mm / np.asarray(spacing_zyx, float))
    out = labels.copy()
    lo = np.asarray(centre) - np.array(ball.shape) // 2
    region = tuple(slice(max(0, a), min(n, a + s)) for a, s, n in zip(lo, ball.shape, labels.shape))
    cut = tuple(slice(r.start - a, r.stop - a) for r, a in zip(region, lo))
    out[region][ball[cut]] = class_id
    return out


def _distance_mm(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask, sampling=spacing_zyx)


def lr_swap(labels, spacing_zyx, rng, settings) -> tuple[np.ndarray, PlantedError] | None:
    whole = set(candidates(labels, spacing_zyx, settings))
    pairs = [c for c in sorted(whole) if classes.by_id(c).side == "left"
             and classes.by_id(c).mirror_name and classes.id_of(classes.by_id(c).mirror_name) in whole]
    if not pairs:
        return None
    left = int(rng.choice(pairs))
    right = classes.id_of(classes.by_id(left).mirror_name)
    out = labels.copy()
    out[labels == left], out[labels == right] = right, left
    return out, PlantedError("lr_swap", (_name(left), _name(right)), f"{_name(left)} and {_name(right)} swapped")


def neighbour_label(labels, spacing_zyx, rng, settings):
    present = set(np.unique(labels))
    whole = set(candidates(labels, spacing_zyx, settings))
    options = []
    for sequence in (classes.vertebrae_cranio_caudal(), classes.ribs("left"), classes.ribs("right")):
        ids = [classes.id_of(c.name) for c in sequence]
        for k, c in enumerate(ids):
            for j in (k - 1, k + 1):
                if c in whole and 0 <= j < len(ids) and ids[j] in present:
                    options.append((c, ids[j]))
    if not options:
        return None
    wrong, neighbour = options[int(rng.integers(len(options)))]
    out = labels.copy()
    out[labels == wrong] = neighbour
    return out, PlantedError("neighbour_label", (_name(wrong), _name(neighbour)),
                             f"{_name(wrong)} labelled as its neighbour {_name(neighbour)}")


def missing(labels, spacing_zyx, rng, settings):
    options = candidates(labels, spacing_zyx, settings)
    if not options:
        return None
    c = int(rng.choice(options))
    out = labels.copy()
    out[labels == c] = 0
    return out, PlantedError("missing", (_name(c),), f"{_name(c)} left out")


def split(labels, spacing_zyx, rng, settings):
    """Gaps across the class's longest axis cut it into ``split_pieces`` pieces of equal length; a class whose
    shape keeps the pieces joined around the gaps (a ring, a curved organ) is passed over for another."""
    gap = settings.split_gap_mm
    min_voxels = int(np.ceil(settings.split_min_piece_ml * 1000.0 / float(np.prod(spacing_zyx))))
    options = candidates(labels, spacing_zyx, settings)
    for c in rng.permutation(options):
        box = ndimage.find_objects((labels == c).astype(np.uint8))[0]
        length = [(s.stop - s.start) * sp for s, sp in zip(box, spacing_zyx)]
        axis = int(np.argmax(length))
        if max(length) < settings.split_pieces * 2 * gap:
            continue
        out = labels.copy()
        start, stop = box[axis].start, box[axis].stop
        half = max(1, int(round(gap / spacing_zyx[axis] / 2)))
        for k in range(1, settings.split_pieces):
            centre = start + round(k * (stop - start) / settings.split_pieces)
            cut = [slice(None)] * 3
            cut[axis] = slice(max(start, centre - half), min(stop, centre + half))
            view = out[tuple(cut)]
            view[view == c] = 0
        pieces, _ = ndimage.label(out[box] == c, structure=np.ones((3, 3, 3), bool))
        if np.count_nonzero(np.bincount(pieces.ravel())[1:] >= min_voxels) >= settings.split_pieces:
            return out, PlantedError("split", (_name(c),), f"{_name(c)} cut into {settings.split_pieces} pieces")
    return None


def _stray(labels, spacing_zyx, rng, settings, outside: bool):
    options = candidates(labels, spacing_zyx, settings)
    if not options:
        return None
    c = int(rng.choice(options))
    # Places are looked for on a grid of about 6 mm: the distances are tens of millimetres.
    step = [max(1, int(6.0 // s)) for s in spacing_zyx]
    coarse = labels[::step[0], ::step[1], ::step[2]]
    sampling = [s * f for s, f in zip(spacing_zyx, step)]
    anatomy = coarse > 0
    if outside:
        places = _distance_mm(anatomy, sampling) >= settings.stray_outside_mm
    else:
        places = anatomy & (coarse != c) & (_distance_mm(coarse == c, sampling) >= settings.stray_far_mm)
        places &= ndimage.binary_erosion(anatomy, iterations=2)  # wholly inside the anatomy
    margin = [max(1, int(np.ceil(10.0 / s))) for s in sampling]  # not cut by the border
    inner = np.zeros_like(places)
    inner[tuple(slice(m, n - m) for m, n in zip(margin, coarse.shape))] = True
    spots = np.argwhere(places & inner)
    if not len(spots):
        return None
    centre = spots[int(rng.integers(len(spots)))] * np.array(step)
    where = "outside the body" if outside else "far from its anatomy"
    kind = "stray_outside" if outside else "stray_far"
    return _blob_at(labels, centre, c, settings.stray_ml, spacing_zyx), PlantedError(
        kind, (_name(c),), f"a {settings.stray_ml:.0f} ml piece of {_name(c)} {where}")


def stray_far(labels, spacing_zyx, rng, settings):
    return _stray(labels, spacing_zyx, rng, settings, outside=False)


def stray_outside(labels, spacing_zyx, rng, settings):
    return _stray(labels, spacing_zyx, rng, settings, outside=True)


def _grow_or_shrink(labels, spacing_zyx, rng, settings, grow: bool):
    options = candidates(labels, spacing_zyx, settings)
    if not options:
        return None
    c = int(rng.choice(options))
    margin = [int(np.ceil(settings.grow_mm / s)) + 1 for s in spacing_zyx]
    box = ndimage.find_objects((labels == c).astype(np.uint8))[0]
    box = tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, labels.shape))
    part = labels[box]
    mask = part == c
    out = labels.copy()
    view = out[box]
    if grow:  # over background only: a grown organ does not eat its neighbours' labels here
        view[(part == 0) & (_distance_mm(mask, spacing_zyx) <= settings.grow_mm)] = c
    else:
        view[mask & (_distance_mm(~mask, spacing_zyx) <= settings.grow_mm)] = 0
        if not (view == c).any():
            return None
    verb = "grown" if grow else "shrunk"
    return out, PlantedError(verb, (_name(c),), f"{_name(c)} {verb} by {settings.grow_mm:.0f} mm")


def grown(labels, spacing_zyx, rng, settings):
    return _grow_or_shrink(labels, spacing_zyx, rng, settings, grow=True)


def shrunk(labels, spacing_zyx, rng, settings):
    return _grow_or_shrink(labels, spacing_zyx, rng, settings, grow=False)


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """(a, b), a < b: the pairs of classes with face-adjacent voxels."""
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1], a[1:]
        differ = (lo != hi) & (lo > 0) & (hi > 0)
        first, second = lo[differ].astype(np.int64), hi[differ].astype(np.int64)
        codes = np.unique(np.minimum(first, second) * 1000 + np.maximum(first, second))
        pairs |= {(int(c // 1000), int(c % 1000)) for c in codes}
    return pairs


def merged(labels, spacing_zyx, rng, settings):
    """A whole class and a touching whole class labelled as the larger of the two."""
    whole = set(candidates(labels, spacing_zyx, settings))
    volumes = _volumes(labels, spacing_zyx)
    pairs = sorted(p for p in touching_pairs(labels) if p[0] in whole and p[1] in whole)
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    keep, lost = (a, b) if volumes[a] >= volumes[b] else (b, a)
    out = labels.copy()
    out[labels == lost] = keep
    return out, PlantedError("merged", (_name(keep), _name(lost)), f"{_name(lost)} merged into {_name(keep)}")


def cut_off(labels, spacing_zyx, rng, settings):
    """The class's head or foot end removed, keeping ``cut_fraction`` of its head-foot extent."""
    options = candidates(labels, spacing_zyx, settings)
    if not options:
        return None
    c = int(rng.choice(options))
    z = np.flatnonzero((labels == c).any(axis=(1, 2)))
    keep = max(1, int(round(settings.cut_fraction * (z[-1] - z[0] + 1))))
    out = labels.copy()
    lost = slice(z[0] + keep, z[-1] + 1) if rng.random() < 0.5 else slice(z[0], z[-1] + 1 - keep)
    view = out[lost]
    view[view == c] = 0
    return out, PlantedError("cut_off", (_name(c),), f"{_name(c)} cut off at {settings.cut_fraction:.0%} of its length")


PLANTERS = {
    "lr_swap": lr_swap,                  # a paired class and its mirror swapped
    "neighbour_label": neighbour_label,  # a vertebra or rib labelled as its neighbour (the paper's 1 % of subjects)
    "missing": missing,                  # a class left out
    "split": split,                      # a class broken into pieces
    "stray_far": stray_far,              # a piece of a class far from its anatomy, inside the body
    "stray_outside": stray_outside,      # a piece of a class in the air outside the body
    "grown": grown,                      # a class grown by several millimetres
    "shrunk": shrunk,                    # a class shrunk by several millimetres
    "merged": merged,                    # two touching classes labelled as one
    "cut_off": cut_off,                  # a class cut off at a wrong level
}
ERROR_KINDS: tuple[str, ...] = tuple(PLANTERS)


def plant(labels: np.ndarray, spacing_zyx, kind: str, seed: int,
          settings: PlantSettings = PlantSettings()) -> tuple[np.ndarray, PlantedError] | None:
    """``labels`` with one error of ``kind`` planted (drawn with ``seed``), or None where it cannot be planted."""
    if kind not in PLANTERS:
        raise ValueError(f"unknown error kind {kind!r}; known: {', '.join(ERROR_KINDS)}")
    return PLANTERS[kind](labels, tuple(float(s) for s in spacing_zyx), np.random.default_rng(seed), settings)


def found(findings, planted: PlantedError) -> bool:
    """Whether any finding (rows with class_name, e.g. ``kidney_left`` or ``rib_left_3/rib_left_4``) names a
    class of the planted error."""
    named = {part for name in findings.class_name for part in str(name).split("/")}
    return bool(named & set(planted.classes))

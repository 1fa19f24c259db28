"""Automatic QA flags: rules over the per-class measurements of a cohort, no rendering needed.

Each rule returns findings (subject, flag, class, detail); a subject's flags are the kinds of
findings it has. The flags sort the correction worklist: a reviewer looks at flagged
subjects first and knows where to look.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from totalseg_train import classes

FLAGS: tuple[str, ...] = (
    "missing_expected",
    "fragmented",
    "stray_piece",
    "volume_outlier",
    "extent_outlier",
    "lr_swap",
    "order_violation",
    "outside_body",
    "beyond_edge",
    "short_of_edge",
    "cut_end",
)
FINDING_COLUMNS = ["subject_id", "flag", "class_name", "place", "detail"]


@dataclass(frozen=True)
class FlagParams:
    expected_margin_sd: float = 2.0  # the scan must cover a class's usual extent by this many robust SDs of
    # where the cohort's instances of it end (in vertebra levels)...
    expected_min_margin_levels: float = 0.15  # ...and at least this many levels (what the level scale is off by)
    expected_margin_levels: float = 0.5  # the margin of a cohort too small to measure that spread
    min_reference_subjects: int = 2  # subjects showing a class whole before its usual extent is trusted
    max_components: int = 3  # more components than this (each >= min_component_mm3) is a fragmented class
    min_thickness_voxels: float = 3.0  # pieces and extent are judged where the grid draws a class this thick
    stray_min_mm: float = 40.0  # a piece this far from every other piece of its class is a stray piece
    outlier_alpha: float = 0.1  # the chance that a subject of normal anatomy gets a cohort-outlier flag, which
    # sets the robust z of an outlier from the classes compared and the patients they are known from...
    outlier_min_ratio: float = 1.5  # ...if it is also this factor away from the cohort median...
    grid_allowance: float = 0.5  # ...widened by exp(grid_allowance x surface share): what the voxel grid blurs
    min_cohort: int = 5  # complete instances (for volume and extent: patients) of a class needed to judge it
    midline_margin_mm: float = 15.0  # a one-sided structure this far on the wrong side of the midline
    order_min_step_mm: float = 0.0  # a vertebra/rib must lie at least this much below the one above
    max_outside_fraction: float = 0.05  # share of a class outside the body that raises a flag...
    min_outside_ml: float = 1.0  # ...as does this volume of it outside the body (a stray piece of a big organ)
    edge_min_voxels: int = 20  # with a CT: a class's border is judged where its inside, border and surroundings
    edge_min_contrast_hu: float = 30.0  # have this many voxels, inside and surroundings differ by this much...
    edge_max_spread: float = 1.0  # ...and the inside is even (interquartile range / contrast at most this);
    edge_max_share: float = 0.5  # a border less than this share of the way from its surroundings to its inside
    short_max_contrast: float = 0.5  # inside and surroundings closer than this x the inside's IQR: short of the
    short_min_shown: float = 0.8  # edge, judged where this share of the cohort's instances show their edge
    cut_min_step: float = 0.45  # an end slice this share of the widest slice above the cohort's usual end...
    cut_min_z: float = 3.5  # ...and a robust z (median / Qn) beyond this is a class cut off at a wrong level


def _finding(subject: str, flag: str, name: str, detail: str, place: str = "") -> dict:
    """One finding; ``place`` is filled in by cohort_flags from the class's extent where the rule leaves it out."""
    return {"subject_id": subject, "flag": flag, "class_name": name, "place": place, "detail": detail}


def level_name(level: float) -> str:
    """The vertebra at a level of level_mapping's scale (0 = C1 ... 23 = L5), e.g. ``T11``; beyond the spine,
    ``above C1`` / ``below L5``."""
    names = [c.name.removeprefix("vertebrae_") for c in classes.vertebrae_cranio_caudal()]
    if level < -0.5:
        return f"above {names[0]}"
    if level > len(names) - 0.5:
        return f"below {names[-1]}"
    return names[int(round(level))]


def level_range(top: float, bottom: float) -> str:
    first, last = level_name(top), level_name(bottom)
    return first if first == last else f"{first}-{last}"


def place_of(z_top: float, z_bottom: float, to_level) -> str:
    """Where a head-foot range lies: its vertebral levels where the subject's spine gives them, and z (mm)."""
    where = f"z {z_bottom:.0f} mm" if round(z_bottom) == round(z_top) else f"z {z_bottom:.0f}..{z_top:.0f} mm"
    return f"{level_range(float(to_level(z_top)), float(to_level(z_bottom)))}, {where}" if to_level else where


def _vertebra_levels() -> dict[str, int]:
    return {c.name: k for k, c in enumerate(classes.vertebrae_cranio_caudal())}


def level_mapping(subject: pd.DataFrame):
    """z (mm) -> vertebral level (C1 = 0 ... L5 = 23) from the vertebrae of one subject, or None.

    Linear between vertebra centroids, extended beyond the outermost ones with the end slopes.
    """
    levels = _vertebra_levels()
    vert = subject[subject.class_name.isin(levels)]
    if len(vert) < 2:
        return None
    k = vert.class_name.map(levels).to_numpy(float)
    z = vert.cz.to_numpy(float)
    order = np.argsort(z)
    z, k = z[order], k[order]
    if np.any(np.diff(z) <= 0):
        return None  # vertebrae out of order: no trustworthy level scale (the order flag reports it)

    def to_level(zq):
        zq = np.asarray(zq, float)
        inside = np.interp(zq, z, k)
        low_slope = (k[1] - k[0]) / (z[1] - z[0])
        high_slope = (k[-1] - k[-2]) / (z[-1] - z[-2])
        below = k[0] + (zq - z[0]) * low_slope
        above = k[-1] + (zq - z[-1]) * high_slope
        return np.where(zq < z[0], below, np.where(zq > z[-1], above, inside))

    return to_level


def expected_margins(reference: pd.DataFrame, p: FlagParams) -> pd.Series:
    """How far inside the scan each class's usual extent must lie before its absence is flagged (vertebra levels).

    ``expected_margin_sd`` robust SDs of where the cohort's complete instances end (head or foot end, the more
    variable), at least ``expected_min_margin_levels``: a class that sits at the same level in every patient is
    expected close to the scan's ends, one that moves with breathing or build only well inside. A class with
    fewer than ``min_cohort`` complete instances takes the median of the other classes' spreads; a
    cohort where no class has them, ``expected_margin_levels``.
    """
    spread = reference[["top_sd", "bottom_sd"]].max(axis=1)
    measured = reference.n >= p.min_cohort
    if not measured.any():
        return pd.Series(p.expected_margin_levels, index=reference.index)
    spread = spread.where(measured, spread[measured].median())
    return np.maximum(p.expected_min_margin_levels, p.expected_margin_sd * spread)


def missing_expected(stats: pd.DataFrame, scans: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Classes the scan's extent should show but that are absent.

    Three reasons a class is expected: (1) its usual extent in vertebral levels, learnt from the
    cohort's complete instances, lies inside the levels the scan covers (by expected_margins); (2) its
    mirror class is present, complete and its mirror position lies in the field of view; (3) it is a
    vertebra or rib between two present ones.
    """
    mappings = {s: level_mapping(g) for s, g in stats.groupby("subject_id")}
    extents = []
    for subject, group in stats.groupby("subject_id"):
        to_level = mappings[subject]
        if to_level is None:
            continue
        whole = group[~group.truncated]
        extents.append(
            pd.DataFrame(
                {"class_name": whole.class_name, "top": to_level(whole.z_top), "bottom": to_level(whole.z_bottom)}
            )
        )
    reference = pd.DataFrame(columns=["top", "bottom", "n", "margin"])
    if extents:
        all_extents = pd.concat(extents)
        reference = all_extents.groupby("class_name").agg(
            top=("top", "median"), bottom=("bottom", "median"), n=("top", "size"),
            top_sd=("top", robust_sd), bottom_sd=("bottom", robust_sd),
        )
        reference = reference[reference.n >= p.min_reference_subjects]
        reference = reference.assign(margin=expected_margins(reference, p))
    sequences = [classes.vertebrae_cranio_caudal(), classes.ribs("left"), classes.ribs("right")]
    findings = []
    for subject, scan in scans.iterrows():
        present = stats[stats.subject_id == subject].set_index("class_name")
        if present.empty:
            findings.append(_finding(subject, "missing_expected", "every class", "the label map is all background"))
            continue
        reasons: dict[str, str] = {}
        places: dict[str, str] = {}
        to_level = mappings.get(subject)
        if to_level is not None:
            scan_top, scan_bottom = to_level(scan.z_max), to_level(scan.z_min)
            covered = reference[
                (reference.top >= scan_top + reference.margin) & (reference.bottom <= scan_bottom - reference.margin)
            ]
            for name in covered.index.difference(present.index):
                usual = level_range(covered.top[name], covered.bottom[name])
                reasons[name] = (f"scan covers its usual levels {usual} "
                                 f"({covered.top[name]:.1f}-{covered.bottom[name]:.1f})")
                places[name] = f"usually {usual}"
        midline = _midline(present, scan)
        for name, row in present.iterrows():
            mirror = classes.by_name(name).mirror_name
            if mirror is None or mirror in present.index or mirror not in _class_names() or row.truncated:
                continue
            mirrored_x = 2 * midline - row.cx
            if scan.z_min <= row.z_bottom and row.z_top <= scan.z_max and scan.x_min <= mirrored_x <= scan.x_max:
                reasons.setdefault(mirror, f"{name} is present and its mirror position is in the scan")
                places.setdefault(mirror, f"opposite {name}, {place_of(row.z_top, row.z_bottom, to_level)}")
        for sequence in sequences:
            ranks = [i for i, c in enumerate(sequence) if c.name in present.index]
            run = sequence[min(ranks, default=0) : max(ranks, default=-1) + 1]
            for k, c in enumerate(run):
                if c.name not in present.index:
                    reasons.setdefault(c.name, "between two present neighbours")
                    above = next(n.name for n in run[k::-1] if n.name in present.index)
                    below = next(n.name for n in run[k:] if n.name in present.index)
                    places.setdefault(c.name, f"between {above} and {below}")
        findings += [_finding(subject, "missing_expected", n, r, places.get(n, "")) for n, r in sorted(reasons.items())]
    return findings


@lru_cache(maxsize=1)
def _class_names() -> frozenset[str]:
    return frozenset(c.name for c in classes.all_classes())


def _midline(present: pd.DataFrame, scan: pd.Series) -> float:
    """x of the patient's midline: the spine where there is one, else the centre of all labels."""
    spine = present[present.index.isin(_vertebra_levels())]
    return float(spine.cx.median()) if len(spine) else float(scan.labels_cx)


def _drawn_whole(stats: pd.DataFrame, p: FlagParams) -> pd.DataFrame:
    """The classes the grid draws at least ``min_thickness_voxels`` thick: their pieces and extent are their own,
    not the grid's (a tube one or two voxels wide breaks and shortens where it runs obliquely or where a
    neighbour is drawn over it)."""
    return stats[stats.thickness_voxels >= p.min_thickness_voxels]


def fragmented(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Classes in more than ``max_components`` pieces.

    Resolution-aware: a class the grid draws less than ``min_thickness_voxels`` thick (the esophagus at
    6 mm in-plane) falls into pieces on the grid itself, so its pieces are not counted; at a finer grid
    the same class is judged.
    """
    bad = _drawn_whole(stats, p)
    bad = bad[bad.n_components > p.max_components]
    return [
        _finding(r.subject_id, "fragmented", r.class_name,
                 f"{r.n_components} components, the largest holds {r.largest_component_fraction:.0%}")
        for r in bad.itertuples()
    ]


def stray_pieces(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    """A piece of a class (of at least min_component_mm3) far from the rest of it: a label in the wrong place.

    Measured between the pieces' nearest voxels where the cohort draws the class in one piece; where it usually
    draws it in several (``min_cohort`` instances, median two pieces or more: a phantom's hip bone drawn as two
    parts), between the pieces' bounding boxes, which keeps the class's own parts together. Classes the grid draws
    too thin to hold together are not judged (see fragmented)."""
    drawn = _drawn_whole(stats, p)
    by_class = drawn.groupby("class_name").n_components
    in_parts = (by_class.transform("size") >= p.min_cohort) & (by_class.transform("median") >= 2)
    gap = drawn.stray_voxel_mm.where(~in_parts, drawn.stray_mm)
    bad = drawn[gap >= p.stray_min_mm]
    return [_finding(r.subject_id, "stray_piece", r.class_name, f"a piece {g:.0f} mm from the rest of the class")
            for r, g in zip(bad.itertuples(), gap[bad.index])]


def robust_sd(values: np.ndarray) -> float:
    """1.4826 MAD: the standard deviation of normal values, which a few outliers cannot inflate."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


# Rousseeuw & Croux's small-sample corrections of Qn, for 2-9 values; beyond, n / (n + 1.4) or n / (n + 3.8).
_QN_SMALL = {2: 0.399, 3: 0.994, 4: 0.512, 5: 0.844, 6: 0.611, 7: 0.857, 8: 0.669, 9: 0.872}


def qn_scale(values: np.ndarray) -> float | np.ndarray:
    """Rousseeuw & Croux's Qn: the standard deviation of normal values from the quartile of their pairwise
    distances. Like the MAD, half the values may be outliers; unlike it, it is 82 % efficient (the MAD 37 %), so
    that a cohort of ten patients knows a class's spread about as well as one of twenty would with the MAD.
    Of the last axis: a number for one sample, an array for rows of samples."""
    x = np.asarray(values, float)
    n = x.shape[-1]
    if n < 2:
        return 0.0 if x.ndim == 1 else np.zeros(x.shape[:-1])
    h = n // 2 + 1
    k = h * (h - 1) // 2
    first, second = np.triu_indices(n, 1)
    distances = np.abs(x[..., first] - x[..., second])
    small = _QN_SMALL.get(n, n / (n + 1.4) if n % 2 else n / (n + 3.8))
    qn = 2.2219 * small * np.partition(distances, k - 1, axis=-1)[..., k - 1]
    return float(qn) if x.ndim == 1 else qn


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / Qn: a z-score that a few outliers cannot hide behind.

    Where most values are equal (Qn 0), no spread is known and every z is 0: a handful of scans of the same
    patient must not make every other patient an outlier.
    """
    values = np.asarray(values, float)
    sd = qn_scale(values)
    if sd == 0:
        return np.zeros_like(values)
    return (values - np.median(values)) / sd


SIMULATED_BELOW = 8  # patients: below, the Qn's spread is too rough for the t approximation of outlier_threshold


def outlier_threshold(n: int, compared: int, p: FlagParams) -> float:
    """The robust z beyond which one of ``compared`` classes of a subject of normal anatomy is an outlier with
    chance ``outlier_alpha``, its class's spread being known from ``n`` patients: the Student t quantile of
    a prediction (about 0.82 (n - 1) degrees of freedom for Qn, times sqrt(1 + 1/n)). A cohort of 10 patients
    knows a spread too poorly to call 3.5 SDs an outlier (the threshold is 5.4 for 90 classes at alpha 0.1),
    one of 1000 well enough (3.3): the threshold comes down as the cohort grows instead of raising false alarms
    while it is small. Simulated normal cohorts of 8-60 patients get a flag on 5.5-6.5 % of subjects at alpha
    0.1. The Qn of fewer patients is too rough for the approximation (it flagged 23 % of subjects with 5, 16 %
    with 7): there the threshold is the quantile of the z itself in simulated normal cohorts.
    """
    chance = p.outlier_alpha / max(1, compared)  # two-sided, per class
    if n < 3:  # each of two values is as far from their median as the other: neither can be told an outlier
        return float("inf")
    if n < SIMULATED_BELOW:
        return _simulated_threshold(n, chance)
    return float(student_t.ppf(1.0 - chance / 2, 0.82 * (n - 1)) * np.sqrt(1.0 + 1.0 / n))


@lru_cache(maxsize=None)
def _simulated_threshold(n: int, chance: float) -> float:
    """The |z| (from the median and Qn of n normal values, the subject's own among them) exceeded with ``chance``:
    a quantile of enough seeded draws to see it 1000 times (its chance then within about 3 %), 2 million at most
    (a few tenths of a second)."""
    draws = int(min(2_000_000, max(50_000, 1000 / chance)))
    rng = np.random.default_rng([n, draws])
    z = np.concatenate([_own_z(rng.standard_normal((min(200_000, draws - start), n), dtype=np.float32))
                        for start in range(0, draws, 200_000)])
    return float(np.quantile(z, 1.0 - chance))


def _own_z(cohorts: np.ndarray) -> np.ndarray:
    """|z| of the first value of each row of normal values within its row."""
    return np.abs(cohorts[:, 0] - np.median(cohorts, axis=1)) / qn_scale(cohorts)


def _cohort_outliers(whole: pd.DataFrame, value: pd.Series, allowance: pd.Series, p: FlagParams,
                     describe) -> list[dict]:
    """Findings for the rows whose log ``value`` is far from their class's: ``describe(row, ratio to the cohort,
    cohort median, z)`` writes each (the row carries ``size_factor``).

    Each subject's size factor is the median ratio of its classes' values to the cohort medians, and a class
    is compared after dividing by it. A class's usual value and spread are its patients' (the median of each
    patient's scans: a contrast and a native scan of one exam are one anatomy, not two that agree), judged
    where ``min_cohort`` patients have it whole. Both a robust z-score (beyond outlier_threshold) and a factor
    (``outlier_min_ratio``, widened by exp(``allowance``)) must be exceeded: in a cohort of near-identical
    values the z-score alone would flag trivial differences.
    """
    whole = whole.assign(log_value=np.log(value.to_numpy(float)), allowance=allowance.to_numpy(float))
    whole = whole[whole.groupby("class_name").patient.transform("nunique") >= p.min_cohort]
    if whole.empty:
        return []
    deviation = whole.log_value - whole.groupby("class_name").log_value.transform("median")
    size = deviation.groupby(whole.subject_id).transform("median")
    whole = whole.assign(adjusted=whole.log_value - size, size_factor=np.exp(size))
    compared = whole.class_name.nunique()
    findings = []
    for name, group in whole.groupby("class_name"):
        patients = group.groupby("patient").adjusted.median().to_numpy(float)
        centre, sd = float(np.median(patients)), qn_scale(patients)
        if sd == 0:
            continue
        threshold = outlier_threshold(len(patients), compared, p)
        for r in group.itertuples():
            z = (r.adjusted - centre) / sd
            if abs(z) > threshold and abs(r.adjusted - centre) >= np.log(p.outlier_min_ratio) + r.allowance:
                findings.append(describe(r, np.exp(r.adjusted - centre), float(np.exp(centre)), z))
    return findings


def volume_outliers(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Complete classes whose volume is far from the cohort's, once the subject's body size is allowed for.

    Organ volumes scale with the patient (see _cohort_outliers). The factor is widened where the voxel grid
    blurs the volume: by exp(grid_allowance x surface share), so that a thin muscle on a 6 mm grid, whose
    volume the grid gets right only to a factor of two, is not flagged while an organ many voxels wide is
    judged at the plain factor. Classes cut by the scan are not compared. ``stats`` carries each row's
    ``patient`` (cohort_flags adds it).
    """
    whole = stats[~stats.truncated]

    def describe(r, ratio, median, z):
        return _finding(r.subject_id, "volume_outlier", r.class_name,
                        f"{r.volume_ml:.1f} ml, {ratio:.2f}x the cohort's {median:.1f} ml for the subject's size "
                        f"(size factor {r.size_factor:.2f}, z {z:+.1f})")

    return _cohort_outliers(whole, whole.volume_ml, p.grid_allowance * whole.surface_share, p, describe)


def extent_outliers(stats: pd.DataFrame, scans: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Complete classes whose head-foot extent is far from the cohort's: a class cut off at a wrong level, or
    running on into its neighbour's slices. The factor is widened by a slice at either end; classes the grid
    draws too thin to hold together are not judged (see fragmented)."""
    whole = _drawn_whole(stats[~stats.truncated], p)
    slice_mm = scans.slice_mm.reindex(whole.subject_id).to_numpy(float)
    extent = whole.z_top - whole.z_bottom + slice_mm

    def describe(r, ratio, median, z):
        return _finding(r.subject_id, "extent_outlier", r.class_name,
                        f"spans {r.z_top - r.z_bottom:.0f} mm head to foot, {ratio:.2f}x the cohort's "
                        f"{median:.0f} mm for the subject's size (z {z:+.1f})")

    return _cohort_outliers(whole, extent, 2 * slice_mm / extent, p, describe)


def lr_swaps(stats: pd.DataFrame, scans: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Left structures right of their right partner, or a one-sided structure on the wrong side.

    In LPS x grows to the patient's left, so a *_left class must have the larger centroid x.
    The one-sided check skips the heart chambers, which do not follow the body's midline.
    """
    findings = []
    heart = {c.name for c in classes.heart_subparts()}
    for subject, group in stats.groupby("subject_id"):
        present = group.set_index("class_name")
        midline = _midline(present, scans.loc[subject])
        for name, row in present.iterrows():
            cls = classes.by_name(name)
            if cls.side is None:
                continue
            mirror = cls.mirror_name
            if cls.side == "left" and mirror in present.index and row.cx < present.cx[mirror]:
                findings.append(_finding(subject, "lr_swap", f"{name}/{mirror}",
                                         f"{name} lies {present.cx[mirror] - row.cx:.0f} mm right of {mirror}"))
            if name in heart:
                continue
            own_side = (row.cx - midline) * (1 if cls.side == "left" else -1)
            if own_side < -p.midline_margin_mm:
                other = "right" if cls.side == "left" else "left"
                findings.append(_finding(subject, "lr_swap", name,
                                         f"{name} lies {-own_side:.0f} mm into the patient's {other} side"))
    return findings


def order_violations(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Vertebrae and ribs must run head to foot in their anatomical order (centroid z decreasing).

    Classes cut by the scan are left out: the centroid of a partial rib says little about its level.
    """
    findings = []
    sequences = [classes.vertebrae_cranio_caudal(), classes.ribs("left"), classes.ribs("right")]
    for subject, group in stats[~stats.truncated].groupby("subject_id"):
        cz = group.set_index("class_name").cz
        for sequence in sequences:
            names = [c.name for c in sequence if c.name in cz.index]
            for upper, lower in zip(names, names[1:]):
                if cz[upper] - cz[lower] < p.order_min_step_mm:
                    findings.append(_finding(subject, "order_violation", f"{upper}/{lower}",
                                             f"{upper} is {cz[lower] - cz[upper]:.0f} mm below {lower}"))
    return findings


def outside_body(stats: pd.DataFrame, scans: pd.DataFrame, p: FlagParams) -> list[dict]:
    bad = stats[(stats.outside_fraction > p.max_outside_fraction) | (stats.outside_ml >= p.min_outside_ml)]
    return [
        _finding(r.subject_id, "outside_body", r.class_name,
                 f"{r.outside_ml:.1f} ml ({r.outside_fraction:.0%}) outside the body "
                 f"(judged from the {scans.body_source[r.subject_id]})")
        for r in bad.itertuples()
    ]


def edge_shown(stats: pd.DataFrame, p: FlagParams) -> pd.Series:
    """Rows whose class the CT sets apart from its surroundings (beyond_edge judges only these): enough voxels,
    inside and around ``edge_min_contrast_hu`` apart, an even inside."""
    contrast = (stats.inside_hu - stats.around_hu).abs()
    return ((stats.edge_voxels >= p.edge_min_voxels) & (contrast >= p.edge_min_contrast_hu)
            & (stats.inside_spread_hu <= p.edge_max_spread * contrast))


def beyond_edge(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Classes drawn beyond the edge the CT shows (a class grown over its surroundings): the border voxels look
    like the tissue around the class, not like its inside.

    share = (border - around) / (inside - around), medians in HU (label_stats.edge_intensities): about 1 on
    the organ's edge (0.6-0.9 with the partial volume of a 3 mm grid, above 1 at a bone's cortex), about 0 a
    few millimetres beyond it. Judged where the CT shows an edge (``edge_min_contrast_hu``) and the inside is
    even (``edge_max_spread``: a bowel of gas and contents has no one inside value); a class grown into tissue
    of its own density is not seen (muscle beside muscle).
    """
    judged = edge_shown(stats, p)
    share = (stats.border_hu - stats.around_hu) / (stats.inside_hu - stats.around_hu).where(judged)
    bad = stats[judged & (share < p.edge_max_share)]
    return [_finding(r.subject_id, "beyond_edge", r.class_name,
                     f"its border ({r.border_hu:.0f} HU) looks like the tissue around it ({r.around_hu:.0f} HU), "
                     f"not like its inside ({r.inside_hu:.0f} HU): drawn beyond the edge the CT shows?")
            for r in bad.itertuples()]


def short_of_edge(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Classes drawn short of the edge the CT shows (a class shrunk inside its organ): the background around the
    class looks like its inside, the two medians closer than ``short_max_contrast`` times the inside's
    interquartile range, where the cohort's instances of the class stand out from their surroundings
    (``short_min_shown`` of them pass edge_shown, of ``min_cohort`` or more): a lung lobe, a bone, a
    contrast-filled vessel; not a bowel of gas and contents, nor a muscle beside unlabelled muscle.
    """
    shown = edge_shown(stats, p).groupby(stats.class_name)
    judged = ((shown.transform("size") >= p.min_cohort) & (shown.transform("mean") >= p.short_min_shown)
              & (stats.edge_voxels >= p.edge_min_voxels))
    contrast = (stats.inside_hu - stats.around_hu).abs()
    bad = stats[judged & (contrast < p.short_max_contrast * stats.inside_spread_hu)]
    return [_finding(r.subject_id, "short_of_edge", r.class_name,
                     f"the tissue around it ({r.around_hu:.0f} HU) looks like its inside ({r.inside_hu:.0f} HU), "
                     f"where the cohort's stand out from their surroundings: drawn short of the edge the CT shows?")
            for r in bad.itertuples()]


def cut_ends(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Classes that end in a full cross-section where the cohort's taper: cut off at a wrong level.

    Each end's area as a share of the class's widest slice (label_stats.end_shares) is compared with the
    cohort's for that end of that class: flagged at least ``cut_min_step`` above the cohort median with a robust
    z beyond ``cut_min_z``. The step is the test (an end slice of 45 % more of the widest slice is no natural
    variation); the z-score only spares classes whose ends vary that much anyway. A class ending against a
    neighbour's face (a vertebra's end plate) ends wide in every subject and is judged against that. Judged on
    complete classes with ``min_cohort`` instances that the grid draws ``min_thickness_voxels`` thick (cohort
    median): a class a voxel or two across ends in a full slice wherever it ends. The place is the cut end's
    level.
    """
    whole = stats[~stats.truncated]
    by_class = whole.groupby("class_name")
    judged = ((by_class.thickness_voxels.transform("median") >= p.min_thickness_voxels)
              & (by_class.class_name.transform("size") >= p.min_cohort))
    whole = whole[judged]
    findings = []
    for end, z_end in (("head", "z_top"), ("foot", "z_bottom")):
        share = whole[f"{end}_end_share"]
        by_class = share.groupby(whole.class_name)
        usual = by_class.transform("median")
        cut = (share - usual >= p.cut_min_step) & (by_class.transform(robust_z) > p.cut_min_z)
        for r, s, u in zip(whole[cut].itertuples(), share[cut], usual[cut]):
            level = getattr(r, z_end)
            to_level = level_mapping(stats[stats.subject_id == r.subject_id])  # only for the few cut classes
            findings.append(_finding(
                r.subject_id, "cut_end", r.class_name,
                f"its {end} end is a full cross-section ({s:.0%} of its widest slice; the cohort's tapers to "
                f"{u:.0%}): cut off at a wrong level?", place_of(level, level, to_level)))
    return findings


def _places(findings: pd.DataFrame, stats: pd.DataFrame, scans: pd.DataFrame) -> list[str]:
    """Each finding's place: the rule's own, else the head-foot range of its classes (both of a pair ``a/b``)."""
    extents = stats.set_index(["subject_id", "class_name"])[["z_top", "z_bottom"]]
    mappings = {s: level_mapping(g) for s, g in stats.groupby("subject_id")}
    places = []
    for r in findings.itertuples():
        keys = [(r.subject_id, n) for n in str(r.class_name).split("/") if (r.subject_id, n) in extents.index]
        if r.place or not keys:
            places.append(r.place)
            continue
        rows = extents.loc[keys]
        places.append(place_of(rows.z_top.max(), rows.z_bottom.min(), mappings.get(r.subject_id)))
    return places


def row_patients(subject_ids: pd.Series, scans: pd.DataFrame) -> np.ndarray:
    """Each row's patient: ``scans.patient`` where the cohort records it (curation's subjects table), else each
    subject its own."""
    if "patient" not in scans.columns:
        return subject_ids.to_numpy()
    known = scans.patient.reindex(subject_ids).to_numpy(object)
    return np.where(pd.isna(known) | (known == ""), subject_ids.to_numpy(), known)


def cohort_flags(stats: pd.DataFrame, scans: pd.DataFrame, p: FlagParams = FlagParams()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flags table (one row per subject of ``scans``) and the findings behind it.

    ``stats``: per-class rows of every subject (label_stats.measure, with subject_id);
    ``scans``: one row per subject indexed by subject_id (z/x range, labels_cx, body_source; ``patient`` where
    known, so that a patient's several scans count as one anatomy in the cohort's usual values).
    """
    stats = stats.assign(patient=row_patients(stats.subject_id, scans))
    findings = pd.DataFrame(
        missing_expected(stats, scans, p)
        + fragmented(stats, p)
        + stray_pieces(stats, p)
        + volume_outliers(stats, p)
        + extent_outliers(stats, scans, p)
        + lr_swaps(stats, scans, p)
        + order_violations(stats, p)
        + outside_body(stats, scans, p)
        + beyond_edge(stats, p)
        + short_of_edge(stats, p)
        + cut_ends(stats, p),
        columns=FINDING_COLUMNS,
    )
    findings["place"] = _places(findings, stats, scans)
    rows = []
    for subject in scans.index:
        mine = findings[findings.subject_id == subject]
        row = {"subject_id": subject}
        text = []
        for flag in FLAGS:
            names = mine.class_name[mine.flag == flag].tolist()
            row[flag] = bool(names)
            if names:
                text.append(f"{flag}: {', '.join(names)}")
        row["n_flags"] = sum(row[f] for f in FLAGS)
        row["flags"] = "; ".join(text)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["subject_id", *FLAGS, "n_flags", "flags"])
    return table, findings.sort_values(["subject_id", "flag", "class_name"], ignore_index=True)

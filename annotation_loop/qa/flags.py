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

from totalseg_train import classes

FLAGS: tuple[str, ...] = (
    "missing_expected",
    "fragmented",
    "volume_outlier",
    "lr_swap",
    "order_violation",
    "outside_body",
)
FINDING_COLUMNS = ["subject_id", "flag", "class_name", "detail"]


@dataclass(frozen=True)
class FlagParams:
    expected_margin_levels: float = 0.5  # the scan must cover a class's usual extent by this many vertebra levels
    min_reference_subjects: int = 2  # subjects showing a class whole before its usual extent is trusted
    max_components: int = 3  # more components than this (each >= min_component_mm3) is a fragmented class
    outlier_z: float = 3.5  # robust z-score of log volume beyond which a volume is an outlier...
    outlier_min_ratio: float = 1.5  # ...if it is also this factor away from the cohort median
    min_cohort: int = 5  # complete instances of a class needed to judge its volume
    midline_margin_mm: float = 15.0  # a one-sided structure this far on the wrong side of the midline
    order_min_step_mm: float = 0.0  # a vertebra/rib must lie at least this much below the one above
    max_outside_fraction: float = 0.05  # share of a class outside the body that raises a flag...
    min_outside_ml: float = 1.0  # ...as does this volume of it outside the body (a stray piece of a big organ)


def _finding(subject: str, flag: str, name: str, detail: str) -> dict:
    return {"subject_id": subject, "flag": flag, "class_name": name, "detail": detail}


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


def missing_expected(stats: pd.DataFrame, scans: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Classes the scan's extent should show but that are absent.

    Three reasons a class is expected: (1) its usual extent in vertebral levels, learnt from the
    cohort's complete instances, lies inside the levels the scan covers; (2) its mirror class is
    present, complete and its mirror position lies in the field of view; (3) it is a vertebra or
    rib between two present ones.
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
    reference = pd.DataFrame(columns=["top", "bottom", "n"])
    if extents:
        all_extents = pd.concat(extents)
        reference = all_extents.groupby("class_name").agg(
            top=("top", "median"), bottom=("bottom", "median"), n=("top", "size")
        )
        reference = reference[reference.n >= p.min_reference_subjects]
    sequences = [classes.vertebrae_cranio_caudal(), classes.ribs("left"), classes.ribs("right")]
    findings = []
    for subject, scan in scans.iterrows():
        present = stats[stats.subject_id == subject].set_index("class_name")
        if present.empty:
            findings.append(_finding(subject, "missing_expected", "every class", "the label map is all background"))
            continue
        reasons: dict[str, str] = {}
        to_level = mappings.get(subject)
        if to_level is not None:
            scan_top, scan_bottom = to_level(scan.z_max), to_level(scan.z_min)
            covered = reference[
                (reference.top >= scan_top + p.expected_margin_levels)
                & (reference.bottom <= scan_bottom - p.expected_margin_levels)
            ]
            for name in covered.index.difference(present.index):
                reasons[name] = f"scan covers its usual levels {covered.top[name]:.1f}-{covered.bottom[name]:.1f}"
        midline = _midline(present, scan)
        for name, row in present.iterrows():
            mirror = classes.by_name(name).mirror_name
            if mirror is None or mirror in present.index or mirror not in _class_names() or row.truncated:
                continue
            mirrored_x = 2 * midline - row.cx
            if scan.z_min <= row.z_bottom and row.z_top <= scan.z_max and scan.x_min <= mirrored_x <= scan.x_max:
                reasons.setdefault(mirror, f"{name} is present and its mirror position is in the scan")
        for sequence in sequences:
            ranks = [i for i, c in enumerate(sequence) if c.name in present.index]
            for c in sequence[min(ranks, default=0) : max(ranks, default=-1) + 1]:
                if c.name not in present.index:
                    reasons.setdefault(c.name, "between two present neighbours")
        findings += [_finding(subject, "missing_expected", n, r) for n, r in sorted(reasons.items())]
    return findings


@lru_cache(maxsize=1)
def _class_names() -> frozenset[str]:
    return frozenset(c.name for c in classes.all_classes())


def _midline(present: pd.DataFrame, scan: pd.Series) -> float:
    """x of the patient's midline: the spine where there is one, else the centre of all labels."""
    spine = present[present.index.isin(_vertebra_levels())]
    return float(spine.cx.median()) if len(spine) else float(scan.labels_cx)


def fragmented(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    bad = stats[stats.n_components > p.max_components]
    return [
        _finding(r.subject_id, "fragmented", r.class_name,
                 f"{r.n_components} components, the largest holds {r.largest_component_fraction:.0%}")
        for r in bad.itertuples()
    ]


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD): a z-score that a few outliers cannot hide behind."""
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    if mad == 0:
        return np.zeros_like(values, dtype=float)
    return (values - median) / mad


def volume_outliers(stats: pd.DataFrame, p: FlagParams) -> list[dict]:
    """Complete classes whose volume is far from the cohort's, once the subject's body size is allowed for.

    Organ volumes scale with the patient: each subject's size factor is the median ratio of its
    complete classes' volumes to the cohort medians, and a class is compared after dividing by it.
    Both a robust z-score of the log volume and a minimum factor must be exceeded: in a cohort of
    near-identical volumes the z-score alone would flag trivial differences. Classes cut by the
    scan are not compared.
    """
    whole = stats[~stats.truncated].copy()
    whole["log_volume"] = np.log(whole.volume_ml.to_numpy(float))
    counts = whole.groupby("class_name").log_volume.transform("size")
    whole = whole[counts >= p.min_cohort]
    if whole.empty:
        return []
    deviation = whole.log_volume - whole.groupby("class_name").log_volume.transform("median")
    size = deviation.groupby(whole.subject_id).transform("median")
    whole["adjusted"] = whole.log_volume - size
    whole["size_factor"] = np.exp(size)
    findings = []
    for name, group in whole.groupby("class_name"):
        adjusted = group.adjusted.to_numpy(float)
        z = robust_z(adjusted)
        centre = np.median(adjusted)
        median_ml = float(np.exp(centre))
        for r, zi, value in zip(group.itertuples(), z, adjusted):
            if abs(zi) > p.outlier_z and abs(value - centre) >= np.log(p.outlier_min_ratio):
                findings.append(_finding(
                    r.subject_id, "volume_outlier", name,
                    f"{r.volume_ml:.1f} ml, {np.exp(value - centre):.2f}x the cohort's {median_ml:.1f} ml "
                    f"for the subject's size (size factor {r.size_factor:.2f}, z {zi:+.1f})"))
    return findings


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


def cohort_flags(stats: pd.DataFrame, scans: pd.DataFrame, p: FlagParams = FlagParams()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flags table (one row per subject of ``scans``) and the findings behind it.

    ``stats``: per-class rows of every subject (label_stats.measure, with subject_id);
    ``scans``: one row per subject indexed by subject_id (z/x range, labels_cx, body_source).
    """
    findings = pd.DataFrame(
        missing_expected(stats, scans, p)
        + fragmented(stats, p)
        + volume_outliers(stats, p)
        + lr_swaps(stats, scans, p)
        + order_violations(stats, p)
        + outside_body(stats, scans, p),
        columns=FINDING_COLUMNS,
    )
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

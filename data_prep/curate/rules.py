"""The inclusion rules: each judges one series and, when it fails, says why.

Rules are applied in the order of ``cfg.rules``; the first failing rule sets the series' reason
(its configured reason code) and a human-readable detail that names no patient.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd

from data_prep.curate.vocabulary import SeriesGeometry, Vocabulary, normalise

INCLUDED = "included"
EXCLUDED = "excluded"


def _modality(row, rule) -> str | None:
    return None if row.modality in set(rule.allowed) else f"modality {row.modality or 'missing'}"


def _multiframe(row, rule) -> str | None:
    return f"{int(row.frames)} frames in one file" if row.frames > 1 else None


def _image_type(row) -> list[str]:
    return [v.strip() for v in str(row.image_type).split("\\")]


def _localizer(row, rule) -> str | None:
    hits = set(_image_type(row)) & {v.upper() for v in rule.image_type}
    if hits:
        return f"ImageType {sorted(hits)[0]}"
    text = normalise(row.series_description)
    if any(re.search(p, text) for p in rule.descriptions):
        return "series description names a localizer"
    return None


def _derived(row, rule) -> str | None:
    if rule.allow:
        return None
    values = _image_type(row) + ["", ""]
    if values[0] in set(rule.image_type_value1) or values[1] in set(rule.image_type_value2):
        return f"ImageType {row.image_type}"
    return None


def _geometry(row, rule) -> str | None:
    if not row.positions_complete:
        return "slices without position, orientation or pixel spacing"
    if not row.orientation_consistent:
        return "slices with different orientations"
    if not row.matrix_consistent:
        return "slices with different matrix size or pixel spacing"
    return None


def _min_slices(row, rule) -> str | None:
    return f"{row.n_slices} slices < {rule.value}" if row.n_slices < rule.value else None


def slice_thickness(row) -> float:
    """SliceThickness, or the slice spacing where the header lacks it."""
    return row.slice_thickness if row.slice_thickness == row.slice_thickness else row.slice_spacing


def _max_slice_thickness(row, rule) -> str | None:
    thickness = slice_thickness(row)
    return f"slice thickness {thickness:g} mm > {rule.value_mm:g} mm" if thickness > rule.value_mm else None


def _spacing(row, rule) -> str | None:
    if row.duplicate_positions:
        return f"{row.duplicate_positions} slices at the same position"
    if row.spacing_deviation > rule.tolerance_mm:
        return (f"slice steps deviate up to {row.spacing_deviation:.2f} mm from {row.slice_spacing:.2f} mm "
                "(missing slices)")
    return None


def _gantry_tilt(row, rule) -> str | None:
    if abs(row.gantry_tilt) > rule.max_deg:
        return f"GantryDetectorTilt {row.gantry_tilt:g} deg"
    if row.stack_tilt_deg > rule.max_deg:
        return f"slices stacked {row.stack_tilt_deg:.1f} deg off their normal"
    return None


def _region(row, rule) -> str | None:
    return f"body region {row.body_region} (from {row.region_source})" if row.body_region == rule.region else None


RULES: dict[str, Callable] = {
    "modality": _modality,
    "multiframe": _multiframe,
    "localizer": _localizer,
    "derived": _derived,
    "geometry": _geometry,
    "min_slices": _min_slices,
    "max_slice_thickness": _max_slice_thickness,
    "spacing": _spacing,
    "gantry_tilt": _gantry_tilt,
    "legs": _region,
    "hands": _region,
}


def describe(series: pd.DataFrame, vocabulary: Vocabulary) -> pd.DataFrame:
    """Add kernel class, contrast phase and body region (what the rules and the selection read)."""
    out = series.copy()
    out["kernel_class"] = [vocabulary.kernel_class(k) for k in out["kernel"]]
    phases = [vocabulary.contrast_phase(r.series_description, r.contrast_agent, r.study_description, r.protocol_name)
              for r in out.itertuples()]
    out["contrast_phase"] = [p for p, _ in phases]
    out["contrast"] = [c for _, c in phases]
    regions = [vocabulary.body_region(r.body_part, (r.series_description, r.study_description, r.protocol_name),
                                      SeriesGeometry(r.fov_mm, r.z_extent_mm, r.lateral_offset_mm))
               for r in out.itertuples()]
    out["body_region"] = [r for r, _ in regions]
    out["region_source"] = [s for _, s in regions]
    return out


def apply_rules(series: pd.DataFrame, rules_cfg) -> pd.DataFrame:
    """decision / reason / detail of every series from the enabled rules, in config order. Consent is not
    among them: it is a gate before every rule (data_prep.curate.consent)."""
    checks = []
    for name, rule in rules_cfg.items():
        if name == "consent":
            raise ValueError("rules.consent: research consent is a gate before every rule, not a rule that can be "
                             "switched off; the registry value(s) that mean consent go in consent.accepted")
        if name not in RULES:
            raise ValueError(f"rules.{name}: unknown rule; known rules are {sorted(RULES)}")
        if rule.enabled:
            checks.append((RULES[name], rule))
    decisions, reasons, details = [], [], []
    for row in series.itertuples():
        for check, rule in checks:
            detail = check(row, rule)
            if detail:
                decisions.append(EXCLUDED)
                reasons.append(rule.reason)
                details.append(detail)
                break
        else:
            decisions.append(INCLUDED)
            reasons.append("")
            details.append("")
    out = series.copy()
    out["decision"], out["reason"], out["detail"] = decisions, reasons, details
    return out

"""The curation rules on their own: header vocabulary (EN/DE), stack geometry, series choice, rule config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest

from data_prep.curate.consent import consent_given
from data_prep.curate.rules import apply_rules, describe
from data_prep.curate.scan import scan_tree
from data_prep.curate.selection import select_series
from data_prep.curate.series import group_series, stack_geometry
from data_prep.curate.vocabulary import SeriesGeometry, Vocabulary, normalise
from totalseg_train.config import compose_config

CFG = compose_config("curate")
VOCABULARY = Vocabulary(CFG.vocabulary)
NOWHERE = SeriesGeometry(fov_mm=500.0, z_extent_mm=400.0, lateral_offset_mm=0.0)


def test_normalise_spells_out_umlauts_and_drops_punctuation():
    assert normalise("CT Thorax/Abdomen portalvenös 3.0 B30f") == "ct thorax abdomen portalvenoes 3 0 b30f"
    assert normalise("Fuß, Spätphase C+") == "fuss spaetphase c+"


@pytest.mark.parametrize("series_description, agent, study_description, protocol, phase, contrast", [
    ("Abdomen nativ 3 B30f", "", "CT Abdomen mit KM", "", "native", "no"),
    ("ABDOMEN NON CONTRAST 3 STANDARD", "", "CT ABDOMEN W CONTRAST", "", "native", "no"),
    ("Thorax arteriell 1.5 B30f", "", "", "", "arterial", "yes"),
    ("Leber portalvenös 2 mm", "", "", "", "portal_venous", "yes"),
    ("ABD PV 3.0", "", "", "", "portal_venous", "yes"),
    ("Abdomen Spätphase 5", "", "", "", "late", "yes"),
    ("DELAYED 5 MIN", "", "", "", "late", "yes"),
    ("Abdomen 3.0 B30f", "Iopromid 370", "CT Abdomen", "", "unknown", "yes"),
    ("Abdomen 3.0 B30f", "Iopromid 370", "CT Abdomen portalvenös", "", "portal_venous", "yes"),
    ("Abdomen 3.0", "", "CT Abdomen mit KM", "", "unknown", "yes"),
    ("Body 3.0", "", "CT C+ ABDOMEN", "", "unknown", "yes"),
    ("CT Body 3.0", "APPLIED", "", "FDG_TK_KM", "unknown", "yes"),
    ("Thorax 1.5", "", "CT Thorax ohne KM", "", "native", "no"),
    ("Abdomen 3 B30f", "NONE", "", "", "unknown", "unknown"),
    ("Body 3.0", "", "", "", "unknown", "unknown"),
])
def test_contrast_phase_from_headers(series_description, agent, study_description, protocol, phase, contrast):
    assert VOCABULARY.contrast_phase(series_description, agent, study_description, protocol) == (phase, contrast)


@pytest.mark.parametrize("body_part, texts, region", [
    ("LEG", ("",), "legs"),
    ("LOWER LEG", ("",), "legs"),
    ("", ("Unterschenkel bds portalvenös 1.5 B", "CT Unterschenkel bds mit KM"), "legs"),
    ("", ("Bein links nativ",), "legs"),
    ("", ("KNIE RE 0.6",), "legs"),
    ("", ("CTA LOWER EXTREMITY RUNOFF",), "legs"),
    ("", ("Fuß li",), "legs"),
    ("HAND", ("",), "hands"),
    ("", ("Hand rechts 0.6 Ur77",), "hands"),
    ("", ("Handgelenk li",), "hands"),
    ("", ("WRIST 0.6",), "hands"),
    ("", ("Becken-Bein Angio",), "abdomen+legs"),   # a run-off with the pelvis is not legs only
    ("", ("CT Thorax-Abdomen mit KM",), "thorax_abdomen"),
    ("", ("Ganzkörper nativ",), "whole_body"),
    ("CHEST", ("Unterschenkel",), "thorax"),         # BodyPartExamined speaks first
    ("", ("CT Body 3.0", "", "FDG_TK_KM"), "unknown"),
])
def test_body_region_from_body_part_and_descriptions(body_part, texts, region):
    assert VOCABULARY.body_region(body_part, texts, NOWHERE)[0] == region


@pytest.mark.parametrize("geometry, region", [
    (SeriesGeometry(fov_mm=200.0, z_extent_mm=160.0, lateral_offset_mm=190.0), "hands"),
    (SeriesGeometry(fov_mm=375.0, z_extent_mm=846.0, lateral_offset_mm=1.0), "legs"),
    (SeriesGeometry(fov_mm=240.0, z_extent_mm=180.0, lateral_offset_mm=0.0), "unknown"),   # a head scan
    (SeriesGeometry(fov_mm=500.0, z_extent_mm=600.0, lateral_offset_mm=0.0), "unknown"),   # thorax-abdomen
    (SeriesGeometry(fov_mm=380.0, z_extent_mm=300.0, lateral_offset_mm=0.0), "unknown"),   # a slim abdomen
])
def test_body_region_from_scan_geometry(geometry, region):
    assert VOCABULARY.body_region("", ("CT nativ",), geometry) == (region, "geometry" if region != "unknown" else "none")


@pytest.mark.parametrize("kernel, kind", [
    ("B30f", "soft"), ("Br38f", "soft"), ("I26f", "soft"), ("STANDARD", "soft"), ("B", "soft"), ("FC08", "soft"),
    ("B70f", "bone"), ("Br64", "bone"), ("BONE", "bone"), ("LUNG", "bone"), ("D", "bone"), ("FC30", "bone"),
    ("YA", "bone"), ("XYZ", "unknown"), ("", "unknown"),
])
def test_kernel_classes(kernel, kind):
    assert VOCABULARY.kernel_class(kernel) == kind


def axial_stack(z: np.ndarray, shift_x: np.ndarray | None = None):
    positions = np.stack([np.zeros_like(z) if shift_x is None else shift_x, np.zeros_like(z), z], axis=1)
    orientations = np.tile([1.0, 0, 0, 0, 1, 0], (len(z), 1))
    matrices = np.tile([256, 256, 1.5, 1.5], (len(z), 1))
    return positions, orientations, matrices


def test_stack_geometry_orders_slices_and_finds_gaps_duplicates_and_tilt():
    z = np.array([10.0, 4.0, 7.0, 1.0, 13.0])
    geometry, order = stack_geometry(*axial_stack(z))
    assert list(z[order]) == [1.0, 4.0, 7.0, 10.0, 13.0]
    assert geometry.slice_spacing == 3.0 and geometry.spacing_deviation == 0.0 and geometry.duplicate_positions == 0
    assert geometry.z_extent_mm == 15.0 and geometry.fov_mm == 384.0 and geometry.stack_tilt_deg == 0.0
    gap, _ = stack_geometry(*axial_stack(np.array([0.0, 3.0, 6.0, 15.0, 18.0])))
    assert gap.spacing_deviation == pytest.approx(6.0)
    dup, _ = stack_geometry(*axial_stack(np.array([0.0, 3.0, 3.0, 6.0])))
    assert dup.duplicate_positions == 1
    z = np.arange(10) * 2.0
    tilted, _ = stack_geometry(*axial_stack(z, shift_x=z * np.tan(np.radians(15))))
    assert tilted.stack_tilt_deg == pytest.approx(15.0, abs=1e-6)
    mixed = axial_stack(z)
    mixed[1][3] = [1.0, 0, 0, 0, 0, -1]
    assert not stack_geometry(*mixed)[0].orientation_consistent


def series_rows(**columns) -> pd.DataFrame:
    """Series that passed the rules, one per value of the given columns (one series by default)."""
    n = len(next(iter(columns.values()))) if columns else 1
    base = dict(decision=["included"] * n, reason=[""] * n, detail=[""] * n, study_key=["st1"] * n,
                series_key=[f"k{i}" for i in range(n)], series_number=list(range(1, n + 1)),
                kernel_class=["soft"] * n, slice_thickness=[3.0] * n, slice_spacing=[3.0] * n, n_slices=[100] * n,
                contrast_phase=["portal_venous"] * n)
    base.update(columns)
    return pd.DataFrame(base)


def test_series_choice_prefers_soft_kernel_then_thinnest_and_pairs_native_with_contrast():
    rows = series_rows(kernel_class=["bone", "soft", "soft", "soft"], slice_thickness=[1.0, 3.0, 1.5, 5.0],
                       contrast_phase=["portal_venous", "portal_venous", "portal_venous", "native"])
    chosen = select_series(rows, CFG.selection)
    assert chosen.decision.tolist() == ["excluded", "excluded", "included", "included"]
    assert set(chosen.loc[chosen.decision == "excluded", "reason"]) == {"not_selected"}
    assert chosen.paired_series_key.tolist() == ["", "", "k3", "k2"]
    # A series curated by an earlier run keeps its place against a better late arrival.
    assert select_series(rows, CFG.selection, curated={"k1"}).decision.tolist()[:3] == ["excluded", "included",
                                                                                         "excluded"]
    # Another exam is chosen on its own.
    rows.loc[3, "study_key"] = "st2"
    assert select_series(rows, CFG.selection).paired_series_key.tolist() == ["", "", "", ""]


def test_unknown_rule_in_config_is_an_error():
    cfg = compose_config("curate", ["+rules.colour.enabled=true", "+rules.colour.reason=x"])
    with pytest.raises(ValueError, match="rules.colour: unknown rule"):
        apply_rules(series_rows(), cfg.rules)


def test_consent_is_a_gate_no_setting_switches_off():
    with pytest.raises(Exception, match="consent"):
        compose_config("curate", ["rules.consent.enabled=false"])
    cfg = compose_config("curate", ["+rules.consent.enabled=false"])
    with pytest.raises(ValueError, match="gate before every rule"):
        apply_rules(series_rows(), cfg.rules)
    with pytest.raises(ValueError, match="consent.accepted is empty"):
        consent_given(pd.Series(["P1"]), {"P1": "yes"}, [""])


def test_consent_given_only_where_the_registry_says_so():
    registry = {"P1": "yes", "P2": " Yes ", "P3": "no", "P4": "refused", "P5": "", "": "yes"}
    patients = pd.Series(["P1", "P2 ", "P3", "P4", "P5", "P6", ""])
    assert consent_given(patients, registry, ["yes"]).tolist() == [True, True, False, False, False, False, False]
    assert consent_given(patients, registry, ["yes", "refused"]).tolist() == [True, True, False, True, False, False,
                                                                             False]


def blank_region_headers(phantom_cohort, index, exam_ids, out):
    """Copies of the exams' CT series without BodyPartExamined and with descriptions that name no region."""
    for row in index[index.exam_id.isin(exam_ids) & (index.kind == "ct")].itertuples():
        target = out / row.exam_id
        target.mkdir(parents=True)
        for path in sorted((phantom_cohort / row.dicom_dir).glob("*.dcm")):
            ds = pydicom.dcmread(path)
            if "BodyPartExamined" in ds:
                del ds.BodyPartExamined
            ds.SeriesDescription, ds.StudyDescription = "CT nativ 1.0", "CT Routine"
            ds.save_as(target / path.name)


def test_legs_and_hands_recognised_from_the_scan_geometry_alone(phantom_cohort, phantom_index, tmp_path):
    blank_region_headers(phantom_cohort, phantom_index, ["p0003_e0", "p0004_e0"], tmp_path)
    scan = scan_tree(tmp_path, workers=2, progress=False)
    series = describe(group_series(scan.files).series, VOCABULARY)
    judged = apply_rules(series, CFG.rules).sort_values("n_slices")
    assert judged.reason.tolist() == ["hands_only", "legs_only"]
    assert (judged.region_source == "geometry").all()
    # Each rule can be switched off: then nothing else stops these series.
    off = compose_config("curate", ["rules.legs.enabled=false", "rules.hands.enabled=false"])
    assert set(apply_rules(series, off.rules).decision) == {"included"}


@pytest.fixture(scope="module")
def real_series(shared_dir):
    """The real example series (20 slices, 3 mm, 2 mm steps, soft kernel), described, before any rule."""
    scan = scan_tree(shared_dir / "data" / "ct_example" / "example_ct_dicom", workers=1, progress=False)
    return describe(group_series(scan.files).series, VOCABULARY)


@pytest.mark.parametrize("overrides, reason", [
    ([], "included"),
    (["rules.modality.allowed=[MR]"], "not_ct"),
    (["rules.localizer.descriptions=['\\bbody\\b']"], "localizer"),
    (["rules.derived.image_type_value1=[ORIGINAL]"], "derived"),
    (["rules.derived.image_type_value1=[ORIGINAL]", "rules.derived.allow=true"], "included"),
    (["rules.min_slices.value=25"], "too_few_slices"),
    (["rules.min_slices.value=25", "rules.min_slices.reason=short_scan"], "short_scan"),
    (["rules.max_slice_thickness.value_mm=2.5"], "slice_too_thick"),
    (["rules.spacing.tolerance_mm=-1"], "inconsistent_spacing"),
    (["rules.gantry_tilt.max_deg=-1"], "gantry_tilt"),
])
def test_each_rule_is_configurable_and_leaves_its_reason(real_series, overrides, reason):
    cfg = compose_config("curate", overrides)
    judged = apply_rules(real_series, cfg.rules).iloc[0]
    assert (judged.reason or judged.decision) == reason

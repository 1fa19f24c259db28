from collections import Counter

import numpy as np
import pandas as pd
import pytest

from totalseg_train import classes


def test_counts_match_the_paper():
    assert classes.num_classes() == 104
    assert classes.class_ids() == list(range(1, 105))
    assert Counter(c.category for c in classes.all_classes()) == {"organ": 27, "bone": 59, "muscle": 10, "vessel": 8}


def test_parts_cover_every_class_exactly_once():
    sizes = {p: len(classes.in_part(p)) for p in classes.PARTS}
    assert sizes == {"organs": 17, "vertebrae": 24, "cardiac": 18, "muscles": 21, "ribs": 24}
    ids = [c.id for p in classes.PARTS for c in classes.in_part(p)]
    assert sorted(ids) == classes.class_ids()


def test_table_equals_the_shared_reference(shared_dir):
    ref = pd.read_csv(shared_dir / "reference" / "classes_v1.csv")
    for row in ref.itertuples():
        c = classes.by_id(row.id)
        assert (c.name, c.part, c.category) == (row.name, row.part, row.category)
        assert c.btcv_id == (None if pd.isna(row.btcv_id) else int(row.btcv_id))
        assert c.v2_total_id == (None if pd.isna(row.v2_total_id) else int(row.v2_total_id))
        assert c.heart_subpart == bool(row.heart_subpart)


def test_lookups():
    assert classes.by_name("liver").id == 5
    assert classes.id_of("urinary_bladder") == 104
    assert [c.name for c in classes.heart_subparts()] == [
        "heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
        "heart_ventricle_right", "pulmonary_artery",
    ]
    assert len(classes.btcv_classes()) == 13
    assert classes.by_v2_total_id(52).name == "aorta"
    assert classes.by_v2_total_id(2000) is None
    with pytest.raises(KeyError, match="unknown class id 105"):
        classes.by_id(105)
    with pytest.raises(KeyError, match="unknown class name"):
        classes.by_name("appendix")


def test_sides_and_anatomical_orders():
    assert classes.by_name("kidney_left").mirror_name == "kidney_right"
    assert classes.by_name("liver").side is None
    vertebrae = classes.vertebrae_cranio_caudal()
    assert [v.name for v in vertebrae[:2]] == ["vertebrae_C1", "vertebrae_C2"] and vertebrae[-1].name == "vertebrae_L5"
    assert len(vertebrae) == 24
    assert [r.name for r in classes.ribs("left")][-1] == "rib_left_12"


def test_part_local_ids_are_contiguous():
    for part in classes.PARTS:
        local = classes.part_local_ids(part)
        assert sorted(local.values()) == list(range(1, len(local) + 1))


def test_v2_map_converts_real_labels_by_name(shared_dir):
    import nibabel as nib

    v2 = np.asarray(nib.load(shared_dir / "data/ct_example/example_seg.nii.gz").dataobj).astype(np.int32)
    v1 = classes.map_v2_to_v1(v2)
    names_v2 = pd.read_csv(shared_dir / "data/ct_example/labels_v2_total.csv").set_index("id")["name"]
    for v2_id in np.unique(v2)[1:]:
        target = np.unique(v1[v2 == v2_id])
        assert len(target) == 1
        if target[0]:
            assert classes.by_id(target[0]).name == names_v2[v2_id]
        else:
            assert names_v2[v2_id] not in classes.class_names()


def test_colours_are_fixed_and_distinct():
    colours = [classes.class_colour(i) for i in classes.class_ids()]
    assert len(set(colours)) == 104
    assert all(0 <= v <= 255 for rgb in colours for v in rgb)
    assert classes.class_colour(5) == classes.class_colour(5)

"""Optional radiomics features per structure through PyRadiomics (``radiomics.enabled``); none of our own.

PyRadiomics 3.0.1 builds from source only: ``make setup`` installs it (see README "Cohort statistics").
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import SimpleITK as sitk

PREFIX = "radiomics_"


def radiomics_table(image: sitk.Image, labels: sitk.Image, class_ids: list[int], feature_classes: list[str],
                    settings: dict | None = None) -> pd.DataFrame:
    """One row per class id: ``class_id`` and ``radiomics_<image type>_<class>_<feature>`` columns.

    A structure PyRadiomics refuses (too few voxels for a feature class) gets NaN features."""
    from radiomics import featureextractor  # imported only when switched on: it is an optional dependency

    logging.getLogger("radiomics").setLevel(logging.WARNING)
    extractor = featureextractor.RadiomicsFeatureExtractor(**(settings or {}))
    extractor.disableAllFeatures()
    for name in feature_classes:
        extractor.enableFeatureClassByName(str(name))
    rows = []
    for class_id in class_ids:
        try:
            result = extractor.execute(image, labels, label=int(class_id))
        except (ValueError, RuntimeError, IndexError):
            rows.append({"class_id": class_id})
            continue
        features = {f"{PREFIX}{k}": float(np.asarray(v)) for k, v in result.items() if not k.startswith("diagnostics")}
        rows.append({"class_id": class_id, **features})
    return pd.DataFrame(rows)

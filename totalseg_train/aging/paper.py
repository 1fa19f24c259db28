"""The paper's age correlations (``totalseg_train.published``) beside ours."""

from __future__ import annotations

import pandas as pd

from totalseg_train import published

# Headline measure -> (our class names, our measure). The paper pools the left and right back muscles.
PAPER_MEASURES = {
    "aorta_volume": (("aorta",), "volume_ml"),
    "autochthon_mean_hu": (("autochthon_left", "autochthon_right"), "mean_hu"),
}
SOURCE = "abstract of the published paper (4004 whole-body CTs)"


def paper_threshold() -> float | None:
    """The paper's corrected significance threshold (P < .0001)."""
    return published.value("aging", "significance_threshold", "bonferroni")


def beside_paper(correlations: pd.DataFrame) -> pd.DataFrame:
    """One row per structure the paper reports: class_name, measure, paper_rs, rs, n, p_corrected, significant."""
    rows = []
    for key, (names, measure) in PAPER_MEASURES.items():
        paper_rs = published.value("aging", "spearman_rs", key)
        for name in names:
            ours = correlations[(correlations.class_name == name) & (correlations.measure == measure)]
            mine = ours.iloc[0] if len(ours) else None
            rows.append({"class_name": name, "measure": measure, "paper_rs": paper_rs,
                         "rs": None if mine is None else mine.rs, "n": 0 if mine is None else int(mine.n),
                         "p_corrected": None if mine is None else mine.p_corrected,
                         "significant": False if mine is None else bool(mine.significant),
                         "paper_source": SOURCE})
    return pd.DataFrame(rows)

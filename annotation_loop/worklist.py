"""Ranking predicted subjects by the correction work they are expected to need, most work first."""

from __future__ import annotations

import numpy as np
import pandas as pd


def rank(table: pd.DataFrame, flag_weight: float, entropy_weight: float) -> pd.DataFrame:
    """Order subjects by expected effort = flag_weight * n_flags + entropy_weight * z(entropy).

    ``table`` has subject_id, n_flags and entropy; ties keep subject order, so the ranking is
    deterministic.
    """
    entropy = table["entropy"].astype(float)
    spread = entropy.std(ddof=0)
    z = (entropy - entropy.mean()) / spread if spread > 0 else entropy * 0.0
    ranked = table.assign(expected_effort=flag_weight * table["n_flags"] + entropy_weight * z)
    ranked = ranked.sort_values(["expected_effort", "subject_id"], ascending=[False, True], kind="stable")
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked.reset_index(drop=True)

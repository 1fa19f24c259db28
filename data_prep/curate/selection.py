"""Series choice per exam: keep the best series of each phase group, mark native/contrast pairs."""

from __future__ import annotations

import pandas as pd

from data_prep.curate.rules import EXCLUDED, INCLUDED, slice_thickness


def _sort_key(row, criteria, kernel_rank: dict[str, int], curated: set[str]) -> tuple:
    parts = []
    for criterion in criteria:
        if criterion == "already_curated":
            parts.append(0 if row.series_key in curated else 1)
        elif criterion == "kernel":
            parts.append(kernel_rank.get(row.kernel_class, len(kernel_rank)))
        elif criterion == "thinnest":
            parts.append(slice_thickness(row))
        elif criterion == "most_slices":
            parts.append(-row.n_slices)
        elif criterion == "series_number":
            parts.append(row.series_number if row.series_number == row.series_number else float("inf"))
        else:
            raise ValueError(f"selection.criteria: unknown criterion {criterion!r}; known: already_curated, "
                             "kernel, thinnest, most_slices, series_number")
    parts.append(row.series_key)  # ties: a stable, deterministic choice
    return tuple(parts)


def select_series(series: pd.DataFrame, cfg, curated: set[str] = frozenset()) -> pd.DataFrame:
    """Apply the series-choice policy to the series that passed the rules.

    ``curated`` holds the series keys already curated by earlier runs (they keep their place when
    ``already_curated`` is a criterion). Adds ``phase_group`` and ``paired_series_key``.
    """
    out = series.copy()
    out["phase_group"] = [cfg.phase_groups.get(p, p) for p in out["contrast_phase"]]
    out["paired_series_key"] = ""
    if not cfg.enabled:
        return out
    kernel_rank = {k: i for i, k in enumerate(cfg.kernel_preference)}
    candidates = out[out["decision"] == INCLUDED]
    for _, exam in candidates.groupby("study_key"):
        kept = {}
        for group, members in exam.groupby("phase_group"):
            ranked = sorted(members.itertuples(), key=lambda r: _sort_key(r, cfg.criteria, kernel_rank, curated))
            best = ranked[0]
            kept[group] = best.Index
            for other in ranked[1:]:
                out.loc[other.Index, ["decision", "reason", "detail"]] = [
                    EXCLUDED, cfg.reason, f"series {_number(best.series_number)} of the exam preferred "
                                          f"({best.kernel_class} kernel, {slice_thickness(best):g} mm)"]
        first, second = (kept.get(group) for group in cfg.pair)
        if first is not None and second is not None:
            out.loc[first, "paired_series_key"] = out.loc[second, "series_key"]
            out.loc[second, "paired_series_key"] = out.loc[first, "series_key"]
    return out


def _number(value) -> str:
    return str(int(value)) if value == value else "?"

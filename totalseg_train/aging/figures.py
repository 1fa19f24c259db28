"""The aging study's figures (PNG): measures against age for the strongest structures, and rs of all."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from totalseg_train.atomic import atomic_path  # noqa: E402

SEX_COLOURS = {"F": "tab:red", "M": "tab:blue"}
UNITS = {"volume_ml": "volume (ml)", "mean_hu": "mean attenuation (HU)"}


def kernel_trend(age: np.ndarray, values: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian-kernel weighted mean of ``values`` at each age of ``grid`` (a smoothed trend)."""
    weights = np.exp(-0.5 * ((grid[:, None] - age[None, :]) / bandwidth) ** 2)
    return (weights @ values) / np.maximum(weights.sum(axis=1), 1e-12)


def strongest(correlations: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k tests with the largest |rs|, significant ones first."""
    ranked = correlations.dropna(subset=["rs"]).assign(strength=lambda t: t.rs.abs())
    return ranked.sort_values(["significant", "strength"], ascending=False).head(k)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def scatter_figure(rows: pd.DataFrame, top: pd.DataFrame, path: Path, bandwidth: float) -> None:
    """Measure against age for each structure of ``top``: points and a smoothed trend by sex."""
    n = max(1, len(top))
    cols = min(3, n)
    fig, axes = plt.subplots(int(np.ceil(n / cols)), cols, figsize=(4.2 * cols, 3.4 * np.ceil(n / cols)),
                             squeeze=False)
    for ax, test in zip(axes.ravel(), top.itertuples()):
        data = rows[rows.class_name == test.class_name].dropna(subset=[test.measure])
        for sex, group in data.groupby("sex"):
            colour = SEX_COLOURS.get(sex, "tab:gray")
            age, values = group["age"].to_numpy(float), group[test.measure].to_numpy(float)
            ax.scatter(age, values, s=6, alpha=0.4, color=colour, label=f"{sex} (n={len(group)})")
            grid = np.linspace(age.min(), age.max(), 60)
            ax.plot(grid, kernel_trend(age, values, grid, bandwidth), color=colour, lw=2)
        ax.set_title(f"{test.class_name}: rs={test.rs:.2f}{' *' if test.significant else ''}", fontsize=9)
        ax.set_xlabel("age (years)")
        ax.set_ylabel(UNITS.get(test.measure, test.measure))
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("Strongest age correlations (* significant after Bonferroni correction)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def heatmap_figure(correlations: pd.DataFrame, path: Path) -> None:
    """rs of every structure (rows) and measure (columns); * marks the significant ones."""
    table = correlations.pivot(index="class_name", columns="measure", values="rs")
    table = table.loc[[c for c in correlations.class_name.unique() if c in table.index]]
    sig = correlations.pivot(index="class_name", columns="measure", values="significant").loc[table.index]
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * table.shape[1], 0.14 * len(table) + 1.2))
    image = ax.imshow(table.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [UNITS.get(m, m) for m in table.columns], fontsize=7)
    ax.set_yticks(range(len(table)), table.index, fontsize=5)
    for (i, j), flag in np.ndenumerate(sig.to_numpy(bool)):
        if flag:
            ax.text(j, i, "*", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="Spearman rs with age", shrink=0.3)
    ax.set_title("Age correlation per structure\n(* significant after Bonferroni correction)", fontsize=8)
    fig.tight_layout()
    _save(fig, path)

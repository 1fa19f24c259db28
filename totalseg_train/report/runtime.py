"""Section 5, runtime and memory [Table 8 / Figure 8]: ``make bench-predict``'s measurements (reports/runtime/
runtime.csv) beside the paper's figures for the same model on CTs of the same rank in size."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from totalseg_train import published
from totalseg_train.report.document import Figure, Section, Table, png_of
from totalseg_train.runtime import COLUMNS, paper_runtime


def runtime_table(measured: pd.DataFrame, paper_models: dict[str, str]) -> pd.DataFrame:
    """Our measurements with the paper's figures for the same case (its smallest / median / largest CT,
    ``runtime.paper_runtime``) of the same model, and nnU-Net's own path on the same case where it was measured
    (``nnunet_wall_s``, ``nnunet_peak_ram_mb``); an experiment that is none of the paper's models stands beside
    its 3 mm model, as make bench-predict prints it."""
    if "path" not in measured.columns:  # measured before nnU-Net's path was timed beside ours
        measured = measured.assign(path="ours")
    missing = [c for c in COLUMNS if c not in measured.columns]
    if missing:
        raise ValueError(f"runtime table lacks column(s) {', '.join(missing)}")
    reference = (measured[measured.path == "nnunet"][["model", "case", "wall_s", "peak_ram_mb"]]
                 .rename(columns={"wall_s": "nnunet_wall_s", "peak_ram_mb": "nnunet_peak_ram_mb"}))
    table = measured[measured.path == "ours"][COLUMNS].drop(columns="path")
    table = table.merge(reference, on=["model", "case"], how="left")
    table["paper_model"] = [paper_models.get(m, published.FAST) for m in table["model"]]
    paper = paper_runtime().rename(columns={"shape": "paper_shape", "wall_s": "paper_wall_s", "ram_mb": "paper_ram_mb",
                                            "gpu_mb": "paper_gpu_mb"}).drop(columns="voxels")
    return table.merge(paper, on=["paper_model", "case"], how="left")


def runtime_figure(table: pd.DataFrame) -> bytes:
    fig, (time_ax, ram_ax) = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{m}\n{c}" for m, c in zip(table["model"], table["case"])]
    x = np.arange(len(table))
    for ax, ours, paper, unit, scale in ((time_ax, "wall_s", "paper_wall_s", "seconds", 1.0),
                                         (ram_ax, "peak_ram_mb", "paper_ram_mb", "peak RAM (GB)", 1 / 1024)):
        ax.bar(x - 0.2, table[ours].astype(float) * scale, 0.4, label="ours", color="#4c72b0")
        ax.bar(x + 0.2, table[paper].astype(float).fillna(0) * scale, 0.4, label="paper (RTX 3090)", color="#8c8c8c")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    hardware = "; ".join(sorted(set(table["hardware"].astype(str))))
    fig.suptitle(f"Prediction of one CT (ours: {hardware})", fontsize=10)
    fig.tight_layout()
    return png_of(fig)


def runtime_section(runtime_csv: Path, paper_models: dict[str, str], workspace: str) -> Section:
    section = Section(5, "Runtime and memory", "Table 8 / Figure 8")
    if not Path(runtime_csv).is_file():
        section.text.append(f"Not available: no runtime measurements ({runtime_csv}). Run "
                            f"`make bench-predict WORKSPACE={workspace}`: it predicts the cohort's smallest, median "
                            "and largest CT with each trained model and records wall time and peak memory.")
        return section
    table = runtime_table(pd.read_csv(runtime_csv), paper_models)
    section.text.append(
        "Wall time and peak memory of predicting one CT (process and children), measured by `make bench-predict`; "
        "the paper's figures are the TotalSegmentator repository's runtime table on an RTX 3090 GPU for CTs of "
        "512x512x280, 458 and 824 voxels (our smallest, median and largest stand beside them; an experiment that is "
        "none of the paper's models beside its 3 mm model); `nnunet_wall_s` and `nnunet_peak_ram_mb`: the same "
        "model on the same CT through nnU-Net's own prediction path, where it was measured. Hardware: "
        + "; ".join(sorted(set(table["hardware"].astype(str)))) + ".")
    section.tables.append(Table("runtime", "Prediction time and memory per CT", table))
    section.figures.append(Figure("runtime", "Prediction time and peak RAM per CT", runtime_figure(table)))
    return section

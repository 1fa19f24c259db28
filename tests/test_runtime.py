"""make bench-predict's measurement: a real prediction of the tiny model in its own process, the runtime table,
and the paper's runtime figures beside it."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from totalseg_train.config import compose_config
from totalseg_train.images import Geometry
from totalseg_train.runtime import COLUMNS, bench_predict, paper_runtime, pick_cases, side_by_side, trained_models


def voxels(path) -> int:
    return math.prod(Geometry.of_file(path).size)


def test_the_cases_are_the_smallest_median_and_largest_image(tiny_run):
    images = sorted((tiny_run / "curated" / "images").glob("*.nii.gz"))
    cases = pick_cases(images, ["smallest", "median", "largest"])
    counts = sorted(voxels(p) for p in images)
    assert [voxels(cases[c]) for c in ("smallest", "median", "largest")] == [counts[0], counts[(len(counts) - 1) // 2],
                                                                          counts[-1]]
    with pytest.raises(ValueError, match="unknown"):
        pick_cases(images, ["huge"])


def test_a_real_prediction_is_measured_and_written_beside_the_papers_figures(tiny_run, tmp_path):
    assert "tiny" in [p.name for p in trained_models(tiny_run / "results")]
    out = tmp_path / "runtime.csv"
    cfg = compose_config("bench_predict", [f"paths.workspace={tiny_run}", f"models=[{tiny_run / 'results' / 'tiny'}]",
                                           "cases=[smallest]", "device=cpu", "workers=1", "torch_threads=1",
                                           f"out={out}"])
    bench_predict(cfg)
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS and list(table.path) == ["ours", "nnunet"]  # nnU-Net's own path beside
    row = table.iloc[0]
    images = sorted((tiny_run / "curated" / "images").glob("*.nii.gz"))
    smallest = min(images, key=lambda p: (voxels(p), p.name))
    assert (row.model, row.case, row.file, row.device) == ("tiny", "smallest", str(smallest), "cpu")
    assert row["shape"] == "x".join(map(str, Geometry.of_file(smallest).size)) and row.voxels == voxels(smallest)
    assert 0 < row.wall_s < 600
    assert row.peak_ram_mb > 150  # a Python process with torch and nnU-Net loaded
    assert pd.isna(row.peak_gpu_mb) and "cores" in row.hardware
    assert table.iloc[1].wall_s > 0 and table.iloc[1].peak_ram_mb > 150 and table.iloc[1].file == row.file

    printed = side_by_side(table, paper_runtime(), {"highres": "highres_1.5mm"})
    assert "fast_3mm" in printed and "512x512x280" in printed and "RTX 3090" in printed
    ratio = f"{table.iloc[1].wall_s / row.wall_s:.2f}"
    assert "nnU-Net/ours" in printed and ratio in printed.split("nnU-Net/ours")[1]
    # Mapped to the 1.5 mm model (configs/paper: paper.models.tiny=highres_1.5mm), the row stands beside it.
    assert "highres_1.5mm" in side_by_side(table, paper_runtime(), {"tiny": "highres_1.5mm"})


def test_the_papers_runtime_table_has_three_sizes_per_model():
    paper = paper_runtime().set_index(["paper_model", "case"])
    assert len(paper) == 6
    assert paper.loc[("highres_1.5mm", "smallest")].wall_s == 77 and paper.loc[("highres_1.5mm", "smallest")]["shape"] == "512x512x280"
    assert paper.loc[("fast_3mm", "largest")].wall_s == 83 and paper.loc[("highres_1.5mm", "median")].wall_s == 169
    assert paper.loc[("fast_3mm", "median")].gpu_mb == pytest.approx(7.4 * 1024)

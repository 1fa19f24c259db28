"""The paper report (python -m totalseg_train.report) built from two small real trained runs in one workspace
(tiny, and tiny_parts with two part models), checked against their scores.parquet recomputed here, opened in
headless Chromium; sections whose inputs are missing say what to run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon
from selenium.webdriver.support.ui import WebDriverWait

from annotation_loop.effort import TOTAL
from annotation_loop.report import effort_by_round
from totalseg_train import classes, published
from totalseg_train.aging.study import run as run_aging
from totalseg_train.config import compose_config
from totalseg_train.evaluate import score_pair
from totalseg_train.evaluate.aggregate import BootstrapSettings
from totalseg_train.report import build_report
from totalseg_train.report.experiments import Experiment
from totalseg_train.report.failures import neighbour_mixups
from totalseg_train.report.overall import overall_table

REPO = Path(__file__).resolve().parent.parent
SAMPLES, SEED = 500, 7


@pytest.fixture(scope="module")
def report(tiny_parts_run) -> dict:
    """The test subject's QA sheet rendered by ``python -m annotation_loop.qa``, then ``python -m
    totalseg_train.report`` comparing tiny (a) with tiny_parts (b); highres and fast stay listed (never trained)."""
    ws = tiny_parts_run
    test_subjects = json.loads((ws / "nnunet" / "split.json").read_text())["test"]
    qa = subprocess.run([sys.executable, "-m", "annotation_loop.qa", f"labels_dir={ws / 'train_labels'}",
                         f"paths.workspace={ws}", f"subjects=[{','.join(test_subjects)}]", "workers=1"],
                        capture_output=True, text=True, cwd=REPO)
    assert qa.returncode == 0, qa.stderr[-3000:]
    before = files_of(ws)
    run = subprocess.run([sys.executable, "-m", "totalseg_train.report", f"paths.workspace={ws}", "comparison.a=tiny",
                          "comparison.b=tiny_parts", f"bootstrap.samples={SAMPLES}", f"bootstrap.seed={SEED}"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    out = ws / "reports" / "paper"
    assert f"paper tables: {out / 'index.html'}" in run.stdout
    return {"ws": ws, "out": out, "md": (out / "index.md").read_text(), "test": test_subjects, "before": before,
            "after": files_of(ws)}


def files_of(ws: Path) -> dict[str, int]:
    """Every file of the workspace and its modification time (ns)."""
    return {str(p.relative_to(ws)): p.stat().st_mtime_ns for p in ws.rglob("*") if p.is_file()}


def table(report: dict, name: str) -> pd.DataFrame:
    return pd.read_csv(report["out"] / "tables" / f"{name}.csv")


def scores_of(report: dict, experiment: str) -> pd.DataFrame:
    return pd.read_parquet(report["ws"] / "results" / experiment / "scores.parquet")


def test_every_table_is_a_csv_and_every_figure_a_png_named_by_the_page(report):
    out, md = report["out"], report["md"]
    csvs = sorted(p.name for p in (out / "tables").glob("*.csv"))
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert {"overall.csv", "per_class_tiny.csv", "per_class_tiny_parts.csv", "comparison.csv", "dataset_exclusions.csv",
            "dataset_split.csv", "dataset_characteristics.csv", "failures_worst_tiny.csv"} <= set(csvs)
    assert {"per_class_tiny.png", "per_class_tiny_parts.png", "comparison_dice.png", "comparison_nsd.png",
            "dataset_characteristics.png", "failures_tiny.png"} <= set(pngs)
    assert [n for n in csvs if f"(tables/{n})" not in md] == []
    assert [n for n in pngs if f"(figures/{n})" not in md] == []
    for png in (out / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    html = (out / "index.html").read_text()
    assert html.count('<img ') == html.count('src="data:image/png;base64,') == len(pngs)  # embedded, not linked


def test_the_report_only_reads_the_workspace(report):
    changed = {p for p in set(report["before"]) | set(report["after"])
               if report["before"].get(p) != report["after"].get(p)}
    # Its own output, its run log, and the lock file beside its output folder (one report at a time).
    assert changed and {p.split("/")[0] + "/" + p.split("/")[1] for p in changed} <= {
        "reports/paper", "logs/report", "reports/.paper.report.lock"}


def test_overall_and_part_means_and_a_class_ci_match_the_scores_recomputed(report):
    overall = table(report, "overall").set_index(["experiment", "group", "name"])
    for experiment in ("tiny", "tiny_parts"):
        scores = scores_of(report, experiment)
        scored = scores[scores.gt_present]
        row = overall.loc[(experiment, "overall", "all")]
        assert row.n_pairs == len(scored) and row.n_subjects == scored.subject_id.nunique() == len(report["test"])
        assert row.dice_mean == pytest.approx(scored.dice.mean(), abs=1e-12)
        assert row.nsd_mean == pytest.approx(scored.nsd.mean(), abs=1e-12)
    parts = json.loads((report["ws"] / "results" / "tiny_parts" / "model.json").read_text())["parts"]
    assert [p["part"] for p in parts] == ["organs", "cardiac"]
    scores = scores_of(report, "tiny_parts")
    assert set(scores.class_id) == {c.id for p in ("organs", "cardiac") for c in classes.in_part(p)}
    for part in parts:
        mine = scores[scores.class_id.isin(part["v1_class_ids"]) & scores.gt_present]
        assert overall.loc[("tiny_parts", "part model", part["part"]), "dice_mean"] == pytest.approx(mine.dice.mean())
    assert ("tiny", "part model", "all") not in overall.index  # a one-part model has no part rows
    runs = table(report, "runs")
    assert runs[["experiment", "part", "classes", "epochs"]].values.tolist() == [
        ["tiny", "all", 104, 2], ["tiny_parts", "organs", 17, 4], ["tiny_parts", "cardiac", 18, 4]]  # tiny_parts: 4 (conftest)
    # The paper's overall values sit only beside the experiments that stand for its models.
    assert overall["paper_dice"].isna().all()

    per_class = table(report, "per_class_tiny").set_index("class_name")
    scores = scores_of(report, "tiny")
    liver = scores[(scores.class_name == "liver") & scores.gt_present].set_index("subject_id").dice
    subjects = sorted(scores.subject_id.unique())
    rng = np.random.default_rng(SEED)  # subjects resampled with replacement, as many as there are
    counts = rng.multinomial(len(subjects), np.full(len(subjects), 1 / len(subjects)), size=SAMPLES)
    values = liver.reindex(subjects).to_numpy()
    resampled = [(c * values).sum() / c.sum() for c in counts]
    assert per_class.loc["liver", "dice_ci_low"] == pytest.approx(np.percentile(resampled, 2.5))
    assert per_class.loc["liver", "dice_ci_high"] == pytest.approx(np.percentile(resampled, 97.5))
    assert per_class.loc["liver", "paper_dice"] == published.per_class().set_index("name").loc["liver", "paper_dice"]
    assert len(per_class) == 104 and len(table(report, "per_class_tiny_parts")) == 35


def test_the_bootstrap_interval_of_several_subjects_matches_an_independent_resampling():
    """overall_table on six subjects scored by the evaluation (label arrays): the interval of the micro-average
    from a plain loop over resamples drawn with the same seed."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(6):
        gt = np.zeros((12, 12, 12), np.uint8)
        gt[2:9, 2:9, 2:9] = classes.id_of("liver")
        gt[9:11, 2:6, 2:6] = classes.id_of("spleen")
        pred = gt.copy()
        pred[rng.random(gt.shape) < 0.1 * i] = 0
        frame = score_pair(gt, pred, (2.0, 2.0, 2.0), 3.0)
        frames.append(frame.assign(subject_id=f"s{i}"))
    scores = pd.concat(frames, ignore_index=True)
    experiment = Experiment("demo", Path("."), {"all": tuple(classes.class_ids())}, None, scores)
    row = overall_table(experiment, BootstrapSettings(2000, 0.9, 3), None).iloc[0]
    scored = scores[scores.gt_present]
    draws = np.random.default_rng(3).multinomial(6, np.full(6, 1 / 6), size=2000)
    per_subject_sum = scored.groupby("subject_id").dice.sum().reindex([f"s{i}" for i in range(6)]).to_numpy()
    per_subject_n = scored.groupby("subject_id").size().reindex([f"s{i}" for i in range(6)]).to_numpy()
    means = [(d * per_subject_sum).sum() / (d * per_subject_n).sum() for d in draws]
    assert row.dice_ci_low == pytest.approx(np.percentile(means, 5)) and row.dice_ci_low < row.dice_mean
    assert row.dice_ci_high == pytest.approx(np.percentile(means, 95)) and row.dice_ci_high > row.dice_mean


def test_the_comparison_is_the_wilcoxon_test_of_the_per_subject_means(report):
    comparison = table(report, "comparison").set_index("metric")
    btcv = [c.name for c in classes.btcv_classes()]
    for metric in ("dice", "nsd"):
        per_subject = {}
        for experiment in ("tiny", "tiny_parts"):
            scores = scores_of(report, experiment)
            scored = scores[scores.class_name.isin(btcv) & scores.gt_present]
            per_subject[experiment] = scored.groupby("subject_id")[metric].mean()
        row = comparison.loc[metric]
        assert row.n_subjects == len(report["test"])
        assert row.mean_a == pytest.approx(per_subject["tiny"].mean())
        assert row.mean_b == pytest.approx(per_subject["tiny_parts"].mean())
        expected = wilcoxon(per_subject["tiny"], per_subject["tiny_parts"])
        np.testing.assert_allclose(row.p_value, expected.pvalue, equal_nan=True)
        assert row.paper_mean_a == 0.932 if metric == "dice" else row.paper_mean_a == 0.971
    subjects = table(report, "comparison_dice_per_subject")
    assert list(subjects.columns) == ["subject_id", "tiny", "tiny_parts", "difference"]


def test_the_dataset_tables_count_the_phantoms_planned_exclusions_and_the_split(report):
    ws = report["ws"]
    planned = pd.read_csv(ws / "raw" / "truth" / "index.csv", keep_default_na=False)
    exclusions = table(report, "dataset_exclusions")
    excluded = exclusions[exclusions.step == "excluded"]
    expected = planned.expected[planned.expected != "included"].value_counts()
    # The reasons the paper counts together share a row (legs_only+hands_only: the paper's extremities, 37).
    assert {r: n for r, n in zip(excluded.reason, excluded.n)} == {
        r: sum(expected.get(one, 0) for one in r.split("+")) for r in excluded.reason}
    assert {one for r in excluded.reason[excluded.n > 0] for one in r.split("+") if expected.get(one)} == set(expected.index)
    assert exclusions.set_index("reason").loc["legs_only+hands_only", "paper_n"] == 37
    assert exclusions.set_index("step").loc["series seen", "n"] == len(planned)
    assert exclusions.set_index("step").loc["kept", "n"] == (planned.expected == "included").sum()
    assert exclusions.set_index("step").loc["kept", "paper_n"] == 1204
    split = json.loads((ws / "nnunet" / "split.json").read_text())
    assert table(report, "dataset_split").set_index("split").subjects.to_dict() == {
        "train": len(split["train"]), "validation": len(split["val"]), "test": len(split["test"])}
    characteristics = table(report, "dataset_characteristics")
    subjects = pd.read_csv(ws / "curated" / "subjects.csv")
    assert characteristics[characteristics.characteristic == "Scanner"].n.sum() == len(subjects)


def test_failure_cases_link_to_the_subjects_qa_sheets(report):
    worst = table(report, "failures_worst_tiny")
    assert len(worst) == 10 and worst.dice.is_monotonic_increasing
    assert set(worst.subject_id) == set(report["test"])
    for link in worst.qa_sheet:
        assert (report["out"] / link).resolve() == (report["ws"] / "qa" / "subjects" / f"{report['test'][0]}.png")
    assert f"]({worst.qa_sheet[0]})" in report["md"]
    named = table(report, "failures_named_tiny").set_index("failure")
    assert named.loc["colon", "paper_share"] == 0.35
    # Vertebrae mixed up, recounted from tiny's scores: a vertebra predicted more as the one above or below.
    scores = pd.read_parquet(report["ws"] / "results" / "tiny" / "scores.parquet")
    order = [f"vertebrae_{v}" for v in [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)]
             + [f"L{i}" for i in range(1, 6)]]
    position = {classes.id_of(name): i for i, name in enumerate(order)}
    vertebrae = scores[scores.gt_present & scores.class_name.isin(order)]
    mixed = {row.subject_id for row in vertebrae.itertuples()
             if row.confused_voxels > row.intersection_voxels and row.confused_with in position
             and abs(position[row.confused_with] - position[row.class_id]) == 1}
    row = named.loc["neighbouring_vertebrae_mixed"]
    assert (row.subjects, row.failures) == (vertebrae.subject_id.nunique(), len(mixed)) and row.paper_share == 0.01


def test_a_vertebra_labelled_as_its_neighbour_is_a_mixup_and_a_stray_voxel_is_not():
    l1, l2, l3 = (classes.id_of(f"vertebrae_L{i}") for i in (1, 2, 3))
    gt = np.zeros((12, 6, 6), np.uint8)
    gt[0:4], gt[4:8], gt[8:12] = l1, l2, l3
    pred = gt.copy()
    pred[0:3] = l2
    pred[8, 0, 0] = l2
    scores = score_pair(gt, pred, (1.0, 1.0, 1.0), 1.0).assign(subject_id="s01")
    mixups = neighbour_mixups(scores)
    assert mixups[["subject_id", "class_name", "confused_with_name"]].values.tolist() == [
        ["s01", "vertebrae_L1", "vertebrae_L2"]]
    assert mixups.confused_voxels.tolist() == [108] and mixups.intersection_voxels.tolist() == [36]


def test_missing_inputs_say_what_to_run(report):
    md, ws = report["md"], report["ws"]
    assert f"`python -m totalseg_train +experiment=highres paths.workspace={ws}`" in md
    assert f"`python -m totalseg_train +experiment=fast paths.workspace={ws}`" in md
    assert f"`make bench-predict WORKSPACE={ws}`" in md
    assert f"`python -m annotation_loop.start paths.workspace={ws}`" in md
    assert f"`python -m totalseg_train.aging paths.workspace={ws}`" in md


def test_an_untrained_comparison_model_and_the_effort_runtime_and_aging_sections(report, tmp_path):
    """In process, into another folder: the narrow model never trained, tiny_parts' scores unreadable (the others
    go on); a bootstrap rounds table as the loop
    writes it (annotation_loop.report), a runtime table in make bench-predict's columns and the aging study's
    output (totalseg_train.aging on a statistics table of 12 subjects) give sections 5, 7 and 8."""
    efforts = pd.DataFrame({"round": [None, None, 1, 1], "subject_id": ["a", "b", "c", "d"], "class_id": [TOTAL] * 4,
                            "voxels_changed": [1000, 1200, 100, 80], "voxels_labelled": [1000, 1200, 1000, 1000],
                            "slices_touched": [40, 60, 10, 6], "dice": [np.nan] * 4})
    effort_by_round(efforts, seconds_per_slice=30.0).to_csv(tmp_path / "bootstrap_rounds.csv", index=False)
    pd.DataFrame([{"model": "fast", "case": "smallest", "path": path, "file": "s0001.nii.gz", "shape": "80x80x60",
                   "voxels": 384000, "wall_s": wall, "peak_ram_mb": 2048.0, "peak_gpu_mb": None, "device": "cpu",
                   "hardware": "2 cores"} for path, wall in (("ours", 12.5), ("nnunet", 25.0))]
                 ).to_csv(tmp_path / "runtime.csv", index=False)
    ages = np.linspace(20, 85, 12)
    stats = pd.DataFrame([{"subject_id": f"s{i:02d}", "class_name": name, "age": age, "sex": "FM"[i % 2],
                           "complete": True, "volume_ml": 100 + age + (i % 3) if name == "aorta" else 50.0 + i % 4,
                           "mean_hu": 40 - 0.5 * age if name == "autochthon_left" else 30.0 + i % 5}
                          for i, age in enumerate(ages) for name in ("aorta", "autochthon_left", "liver")])
    stats.to_parquet(tmp_path / "statistics.parquet")
    run_aging(compose_config("aging", [f"paths.workspace={tmp_path}", f"statistics={tmp_path / 'statistics.parquet'}",
                                       "min_subjects=5"]))
    # The results with tiny_parts' scores cut off (its model folders are reached through the nnU-Net folder).
    (tmp_path / "nnunet").symlink_to(report["ws"] / "nnunet")
    for experiment in ("tiny", "tiny_parts"):
        shutil.copytree(report["ws"] / "results" / experiment, tmp_path / "results" / experiment)
    broken = tmp_path / "results" / "tiny_parts" / "scores.parquet"
    broken.write_bytes(broken.read_bytes()[:100])
    cfg = compose_config("report", [f"paths.workspace={report['ws']}", f"out={tmp_path / 'paper'}",
                                    f"inputs.results={tmp_path / 'results'}",
                                    "comparison.a=tiny", "comparison.b=narrow_tiny", "bootstrap.samples=100",
                                    f"inputs.bootstrap_rounds={tmp_path / 'bootstrap_rounds.csv'}",
                                    f"inputs.runtime_csv={tmp_path / 'runtime.csv'}",
                                    f"inputs.aging_dir={tmp_path / 'reports' / 'aging'}"])
    page = build_report(cfg)
    md = page.with_name("index.md").read_text()
    assert f"`python -m totalseg_train +experiment=narrow_tiny paths.workspace={report['ws']}`" in md
    assert f"tiny_parts: no test scores: {broken} is not a readable scores table" in md
    assert (tmp_path / "paper" / "tables" / "per_class_tiny.csv").exists()
    assert not (tmp_path / "paper" / "tables" / "per_class_tiny_parts.csv").exists()
    tables = tmp_path / "paper" / "tables"
    assert not (tables / "comparison.csv").exists()
    effort = pd.read_csv(tables / "annotation_effort.csv")
    assert list(effort["round"]) == [0, 1]
    assert effort.times_faster_than_scratch.tolist() == pytest.approx([1.0, 50 / 8])  # median slices 50 vs 8
    runtime = pd.read_csv(tables / "runtime.csv")
    assert len(runtime) == 1 and runtime.nnunet_wall_s[0] == 25.0  # nnU-Net's own path beside ours, not a row
    runtime = runtime.iloc[0]
    assert (runtime.wall_s, runtime.paper_model, runtime.paper_wall_s, runtime.paper_shape) == (
        12.5, "fast_3mm", 34, "512x512x280")  # the paper's 3 mm model on its smallest CT
    assert runtime.paper_ram_mb == pytest.approx(7.4 * 1024)
    aging = pd.read_csv(tables / "aging_paper.csv").set_index("class_name")
    assert aging.loc["aorta", "paper_rs"] == 0.64 and aging.loc["aorta", "rs"] > 0.9
    assert aging.loc["autochthon_left", "rs"] == pytest.approx(-1.0)
    figures = sorted(p.name for p in (tmp_path / "paper" / "figures").glob("aging_*.png"))
    assert figures == sorted(f"aging_{p.name}" for p in (tmp_path / "reports" / "aging").glob("*.png")) != []


def test_the_page_opens_in_chromium_without_errors_and_every_image_loads(report, browser):
    browser.get((report["out"] / "index.html").as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete)"))
    widths = browser.execute_script("return [...document.images].map(i => i.naturalWidth)")
    assert len(widths) == len(list((report["out"] / "figures").glob("*.png"))) and min(widths) > 100
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    headings = browser.execute_script("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
    assert [h.split(".")[0] for h in headings] == [str(i) for i in range(1, 9)]

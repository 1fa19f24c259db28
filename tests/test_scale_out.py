"""Scale-out: per-subject stages as shards of a Hydra sweep through submitit (``hydra/launcher=local`` here,
``slurm`` on a cluster), merged into tables identical to a run in one process; the SLURM launcher's script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import REPO, train_overrides
from totalseg_train import classes
from totalseg_train.job_shares import core_share
from totalseg_train.shards import PARTS_DIR

TIMING = ["mesh_seconds", "render_seconds", "rendered_at"]  # when and how fast a sheet was drawn, not what it shows


def _run(module: str, *overrides: str, sweep: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", module, *(["-m"] if sweep else []), *overrides]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


def _three_local_jobs(workspace: Path) -> list[str]:
    return [f"paths.workspace={workspace}", "shard.index=0,1,2", "shard.count=3", "hydra/launcher=local"]


def logged_shares(logs: Path) -> list[dict[int, tuple[list[int], str]]]:
    """Per sweep under a stage's log folder, the cores and GPUs each local job says it was given."""
    shares = []
    for sweep in sorted(logs.glob("multirun_*")):
        found = (re.search(r"local job (\d+): cores ([\d,]+); GPUs (\S+)", log.read_text())
                 for log in sweep.glob(".submitit/*/*_log.out"))
        shares.append({int(m[1]): ([int(core) for core in m[2].split(",")], m[3]) for m in found if m})
    return shares


@pytest.fixture(scope="module")
def labels(workspace, tmp_path_factory) -> Path:
    """The coarse cohort's seven truth label maps; in one subject of each shard a class with five or more complete
    instances is cut off at half its length: the whole cohort judges its volume, a shard of two or three subjects
    (the first to finish sees only its own) cannot."""
    folder = tmp_path_factory.mktemp("scale_labels")
    for path in sorted((workspace / "truth_labels").glob("*.nii.gz")):
        shutil.copy(path, folder / path.name)
    assert len(list(folder.iterdir())) == 7
    for subject, name in (("s0004", "lung_upper_lobe_left"), ("s0006", "kidney_left"), ("s0005", "stomach")):
        image = sitk.ReadImage(str(folder / f"{subject}.nii.gz"))
        array = sitk.GetArrayFromImage(image)
        voxels = np.argwhere(array == classes.id_of(name))
        array[tuple(voxels[voxels[:, 0] < np.median(voxels[:, 0])].T)] = 0
        cut = sitk.GetImageFromArray(array)
        cut.CopyInformation(image)
        sitk.WriteImage(cut, str(folder / f"{subject}.nii.gz"), useCompression=True)
    return folder


def test_qa_as_three_local_jobs_gives_the_tables_of_one_process(workspace, labels, tmp_path):
    common = [f"labels_dir={labels}", "images_dir=null", "workers=1", "render.panel_height=200",
              "render.max_panel_width=160"]
    _run("annotation_loop.qa", *common, f"out={tmp_path / 'one'}", f"paths.workspace={tmp_path}")
    sweep = _run("annotation_loop.qa", *common, f"out={tmp_path / 'three'}", *_three_local_jobs(tmp_path), sweep=True)
    assert "Submitit 'local' sweep" in sweep.stdout + sweep.stderr

    one, three = tmp_path / "one", tmp_path / "three"
    for table in ("flags.csv", "flag_findings.csv", "errors.csv"):
        assert (one / table).read_bytes() == (three / table).read_bytes(), f"{table} differs from one process"
    renders = [pd.read_csv(folder / "renders.csv", keep_default_na=False).drop(columns=TIMING)
               for folder in (one, three)]
    pd.testing.assert_frame_equal(renders[0], renders[1])
    assert len(renders[0]) == 7 and (renders[0].n_classes > 0).all()
    assert sorted(p.name for p in (three / "subjects").glob("*.png")) == sorted(
        p.name for p in (one / "subjects").glob("*.png"))
    assert sorted(p.name for p in (three / "grids").glob("*.png")) == ["grid_001.png"]

    parts = pd.concat([pd.read_csv(three / PARTS_DIR / f"renders_{i}of3.csv", keep_default_na=False)
                       for i in range(3)])
    assert sorted(parts.subject_id) == sorted(renders[0].subject_id), "each subject in exactly one shard"
    logs = "".join(p.read_text() for p in tmp_path.glob("logs/qa/multirun_*/.submitit/*/*_log.out"))
    assert "QA of 7 subjects" in logs and "sheets rendered now: 0 (" in logs, \
        "the merge renders nothing: sheets whose flags the cohort changed get them on their shard's frame"
    cores = os.sched_getaffinity(0)
    assert logged_shares(tmp_path / "logs" / "qa") == [{i: (core_share(cores, i, 3), "none") for i in range(3)}], \
        "each job on its own share of the cores, no GPU"
    merged = dict(zip(renders[1]["subject_id"], renders[1]["flags"]))
    assert any(merged[row.subject_id] != row.flags for row in parts.itertuples()), \
        "some flags judged within a shard change once the whole cohort is judged (the case the merge is for)"
    before = {p.name: p.stat().st_mtime_ns for p in (three / "subjects").glob("*.png")}
    again = _run("annotation_loop.qa", *common, f"out={three}", f"paths.workspace={tmp_path}")
    assert "sheets rendered now: 0 (up to date: 7)" in again.stdout, "a second merge redoes nothing"
    assert {p.name: p.stat().st_mtime_ns for p in (three / "subjects").glob("*.png")} == before


def test_a_sweep_asking_each_job_for_more_gpus_than_the_machine_shows_stops_before_any_job(tmp_path):
    command = [sys.executable, "-m", "totalseg_train.evaluate", "-m", *_three_local_jobs(tmp_path),
               "hydra.launcher.gpus_per_node=2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "7"}
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == \
        "error: hydra.launcher.gpus_per_node=2: 2 GPUs per job asked for, but this machine shows 1 (7)"
    assert not list(tmp_path.rglob(".submitit")), "no job was started"


def test_curation_as_three_local_jobs_gives_the_cohort_of_one_process(coarse_cohort, tmp_path):
    """The coarse cohort's DICOM curated as three local jobs: each plans the cohort in turn and converts its share,
    the last one writes the tables; images, key and tables are those of a run in one process."""
    one = coarse_cohort(tmp_path / "one", 8)  # curated in one process (conftest)
    three = tmp_path / "three"
    shutil.copytree(one / "raw", three / "raw")
    sweep = _run("data_prep.curate", "progress=false", *_three_local_jobs(three), sweep=True)
    assert "Submitit 'local' sweep" in sweep.stdout + sweep.stderr
    for table in ("subjects.csv", "withdrawn.csv"):
        assert (one / "curated" / table).read_bytes() == (three / "curated" / table).read_bytes(), table
    pd.testing.assert_frame_equal(*(pd.read_parquet(w / "curated" / "series.parquet") for w in (one, three)))
    assert (one / "private" / "pseudonym_key.csv").read_bytes() == (three / "private" / "pseudonym_key.csv").read_bytes()
    assert (one / "reports" / "characteristics.csv").read_bytes() == (three / "reports" / "characteristics.csv").read_bytes()
    images = sorted(p.name for p in (one / "curated" / "images").glob("*.nii.gz"))
    assert images and images == sorted(p.name for p in (three / "curated" / "images").glob("*.nii.gz"))
    for name in images:
        a, b = (sitk.ReadImage(str(w / "curated" / "images" / name)) for w in (one, three))
        assert (a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == (b.GetOrigin(), b.GetSpacing(), b.GetDirection())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b), err_msg=name)
    parts = pd.concat(pd.read_csv(three / "curated" / PARTS_DIR / f"conversions_{i}of3.csv", dtype=str)
                      for i in range(3))
    assert sorted(parts.subject_id) == [name[: -len(".nii.gz")] for name in images], "each subject in one shard"
    assert set(parts.status) == {"converted"} and list(parts.columns) == ["subject_id", "status"]
    summary = json.loads((three / "curated" / "curation.json").read_text())
    assert summary["converted_now"] == 0 and summary["subjects"] == len(images)  # the merge found every image done


def test_evaluation_as_three_local_jobs_gives_the_tables_of_one_process(workspace, labels, tmp_path):
    predictions = tmp_path / "predicted"
    predictions.mkdir()
    for path in sorted(labels.glob("*.nii.gz"))[1:]:  # the first subject has no prediction: scored 0
        shutil.copy(path, predictions / path.name)
    poor = predictions / sorted(labels.glob("*.nii.gz"))[2].name  # half of it missed: a poor prediction
    image = sitk.ReadImage(str(poor))
    array = sitk.GetArrayFromImage(image)
    array[: array.shape[0] // 2] = 0
    halved = sitk.GetImageFromArray(array)
    halved.CopyInformation(image)
    sitk.WriteImage(halved, str(poor))
    common = [f"gt_dir={labels}", f"pred_dir={predictions}", "workers=1"]
    _run("totalseg_train.evaluate", *common, f"out_dir={tmp_path / 'one'}", f"paths.workspace={tmp_path}")
    on_two_gpus = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}  # as on a workstation with two GPUs
    sweep = _run("totalseg_train.evaluate", *common, f"out_dir={tmp_path / 'three'}", *_three_local_jobs(tmp_path),
                 "hydra.launcher.gpus_per_node=1", sweep=True, env=on_two_gpus)
    assert ("3 jobs at once with 1 GPU each, but this machine shows 2 (3,5): up to 2 jobs share a GPU and its memory;"
            " hydra.sweeper.max_batch_size=2 runs 2 at a time") in sweep.stdout + sweep.stderr
    assert {i: gpus for i, (_, gpus) in logged_shares(tmp_path / "logs" / "evaluate")[0].items()} == \
        {0: "3", 1: "5", 2: "3"}, "more jobs than GPUs: they take turns"
    one, three = (pd.read_parquet(tmp_path / name / "scores.parquet") for name in ("one", "three"))
    pd.testing.assert_frame_equal(one, three)
    assert one.subject_id.nunique() == 7 and one.prediction_missing.sum() > 0 and (one.dice < 0.5).any()
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "three")]
    assert summaries[0] == summaries[1]
    assert summaries[0]["subjects"]["missing_prediction"] == [sorted(labels.glob("*.nii.gz"))[0].name[:-7]]


def test_prediction_and_statistics_as_three_local_jobs_match_one_process(tiny_run, tmp_path):
    """``statistics model=``: each job predicts its own subjects with the tiny model, then measures them."""
    images = tmp_path / "images"
    images.mkdir()
    curated = sorted((tiny_run / "curated" / "images").glob("*.nii.gz"))
    small = sorted(curated, key=lambda p: p.stat().st_size)[:3]
    for path in small:
        shutil.copy(path, images / path.name)
    common = [f"model={tiny_run / 'results' / 'tiny'}", f"images_dir={images}",
              f"subjects_csv={tiny_run / 'curated' / 'subjects.csv'}", "workers=1", "progress=false", "device=cpu"]
    for name in ("one", "three"):
        where = [f"out={tmp_path / name}", f"predicted_dir={tmp_path / name / 'predicted'}"]
        if name == "one":
            _run("totalseg_train.statistics", *common, *where, f"paths.workspace={tmp_path}")
        else:
            _run("totalseg_train.statistics", *common, *where, *_three_local_jobs(tmp_path), sweep=True)
    for path in small:
        one, three = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "predicted" / path.name)))
                      for name in ("one", "three"))
        assert one.shape == three.shape and (one == three).all() and one.any(), path.name
    one, three = (pd.read_parquet(tmp_path / name / "statistics.parquet") for name in ("one", "three"))
    pd.testing.assert_frame_equal(one, three)
    assert one.subject_id.nunique() == 3
    runs = [pd.read_csv(tmp_path / "three" / PARTS_DIR / f"run_{i}of3.csv") for i in range(3)]
    assert sorted(pd.concat(runs).subject_id) == sorted(p.name[:-7] for p in small)


def test_slurm_launcher_asks_for_a_gpu_the_time_limit_and_requeues(tmp_path, monkeypatch):
    """The sbatch script submitit would submit for one highres part, rendered without a cluster: submitit
    only looks for an ``srun`` on the PATH before it writes the script, and submission is where we stop."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin")
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", ["+experiment=highres", "part=organs", "hydra/launcher=slurm",
                                f"paths.workspace={tmp_path}", "hydra.launcher.partition=gpu",
                                "hydra.launcher.account=radiology", "hydra.launcher.timeout_min=1440"],
                      return_hydra_config=True)
    assert cfg.resume is True, "a requeued part continues from its checkpoint without resume=true"
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    submitted = {}

    class Submitted(Exception):
        pass

    def submit(executor, *_):
        slurm = executor._executor
        submitted["script"] = slurm._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
        submitted["max_num_timeout"] = slurm.max_num_timeout
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    with pytest.raises(Submitted):
        launcher.launch([["part=organs"]], 0)
    script = submitted["script"]
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --time=1440", "#SBATCH --partition=gpu",
                 "#SBATCH --account=radiology", "#SBATCH --signal=USR2@300", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=64GB"):
        assert line in script, f"{line} not in\n{script}"
    assert submitted["max_num_timeout"] == 20, "requeued up to 20 times after a time-out"


def test_two_part_training_as_local_jobs_resumes_a_killed_part_and_scores_once(tiny_parts_run):
    """tiny_parts trained as a two-job sweep; the cardiac job was killed after its first checkpoint and the sweep
    started again (conftest.tiny_parts_run): cardiac continued from its checkpoint, organs was not trained again,
    and the test split was predicted and scored once, when the last part was done."""
    import torch

    ws = tiny_parts_run
    record = json.loads(ws.with_name("tiny_parts_sweep.json").read_text())
    assert record["first_returncode"] != 0, "the sweep reports the killed job"
    assert not record["cardiac_final_after_first"], "killed before it finished"
    first = record["summary_after_first"]
    assert first["parts"]["organs"]["trained"] and not first["parts"]["cardiac"]["trained"]
    assert first["predictions"] is None and first["evaluation"] is None, "nothing predicted while a part trains"

    fold = next((ws / "nnunet" / "results").glob("Dataset395_*/*/fold_0"))
    logged = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    starts = logged["logging"]["epoch_start_timestamps"]
    assert logged["current_epoch"] == 4 and len(starts) == 4
    assert starts[0] < record["killed_at"] < starts[-1], "epochs before the kill kept, later ones after it"
    assert len(list(fold.glob("training_log_*.txt"))) == 2, "one training, started twice"
    organs = next((ws / "nnunet" / "results").glob("Dataset394_*/*/fold_0/checkpoint_final.pth"))
    assert organs.stat().st_mtime_ns == record["organs_final_mtime_ns"], "a finished part is never retrained"
    cores = os.sched_getaffinity(0)
    each_its_own = {0: (core_share(cores, 0, 2), "3"), 1: (core_share(cores, 1, 2), "5")}
    assert logged_shares(ws / "logs" / "train") == [each_its_own, each_its_own], \
        "in both sweeps, each part on its own GPU of the two and its own share of the cores"

    results = ws / "results" / "tiny_parts"
    summary = json.loads((results / "run_summary.json").read_text())
    assert summary["predictions"]["n"] == 1 and summary["evaluation"]["subjects"]["scored"] == 1
    scored = {name: (results / name).stat().st_mtime_ns for name in ("scores.parquet", "summary.json")}
    again = _run("totalseg_train", *train_overrides(ws, "tiny_parts"), "model.final_validation=false",
                 "model.epochs=4")  # the final step as its own command: found done
    assert "test split: mean Dice" in again.stdout
    assert {name: (results / name).stat().st_mtime_ns for name in scored} == scored, "scored once"


def test_forked_children_of_a_job_can_be_terminated():
    """A submitit job handles SIGTERM itself (to requeue); a fork pool's workers must not inherit that, or
    ``Pool.terminate()`` waits for them for ever (nnU-Net's planning hung so in a local sweep)."""
    code = """
import os, signal, time
from totalseg_train.engine.environment import terminable_forks
signal.signal(signal.SIGTERM, lambda *_: print("handled by the job", flush=True))
terminable_forks()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
time.sleep(0.5)
os.kill(child, signal.SIGTERM)
os.kill(os.getpid(), signal.SIGTERM)
_, status = os.waitpid(child, 0)
print("child", os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["handled by the job", "child 15"]


def test_the_job_that_writes_the_last_part_merges_and_a_stage_returns_what_it_asks_for(tmp_path):
    from totalseg_train.shards import Shard, run_sharded

    calls = []

    def work(shard: Shard) -> str:
        held = sorted(p.name.split(".")[-2] for p in tmp_path.parent.glob(f".{tmp_path.name}.*.lock") if p.read_text())
        calls.append((shard.name, held))
        if not shard.whole:
            shard.part(tmp_path, "rows", ".csv").parent.mkdir(exist_ok=True)
            shard.part(tmp_path, "rows", ".csv").write_text(shard.name)
        return shard.name

    assert run_sharded(work, Shard(1, 2), tmp_path, "qa", "rows") == "1of2"  # shard 0 has not written its part
    assert run_sharded(work, Shard(0, 2), tmp_path, "qa", "rows") == "0of1"  # the last part: this job merged
    assert run_sharded(work, Shard(0, 2), tmp_path, "qa", "rows", return_merged=False) == "0of2"
    assert [name for name, _ in calls] == ["1of2", "0of2", "0of1", "0of2", "0of1"]
    # Under one lock each time: the shard's (shards run side by side), or the stage's for the merge.
    assert [held for _, held in calls] == [["qa-shard-1-of-2"], ["qa-shard-0-of-2"], ["qa"], ["qa-shard-0-of-2"], ["qa"]]


def test_parts_of_an_earlier_sweep_do_not_start_the_merge_of_the_next(tmp_path):
    from totalseg_train.shards import Shard, run_sharded

    def work(shard: Shard) -> str:
        if not shard.whole:
            shard.part(tmp_path, "rows", ".csv").parent.mkdir(exist_ok=True)
            shard.part(tmp_path, "rows", ".csv").write_text(shard.name)
        return shard.name

    for index in (0, 1):  # the first sweep, finished and merged
        run_sharded(work, Shard(index, 2), tmp_path, "qa", "rows", sweep="/sweeps/monday")
    # the second sweep of the same count: its first job finds an old part of shard 1 and must not merge
    assert run_sharded(work, Shard(0, 2), tmp_path, "qa", "rows", sweep="/sweeps/tuesday") == "0of2"
    assert run_sharded(work, Shard(1, 2), tmp_path, "qa", "rows", sweep="/sweeps/tuesday") == "0of1"
    assert (tmp_path / "shards" / "rows_1of2.csv.sweep").read_text() == "/sweeps/tuesday"

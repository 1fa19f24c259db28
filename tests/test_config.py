import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from totalseg_train.config import CONFIG_DIR, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
PRIMARY = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_the_three_experiments_exist():
    assert {"tiny", "fast", "highres"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config("train", [f"+experiment={experiment}", f"paths.workspace={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert cfg.model.name == experiment
    assert cfg.paths.nnunet == f"{tmp_path}/nnunet"
    assert cfg.model.mirroring is False


def test_experiments_hold_only_deltas():
    base = compose_config("train")
    highres = compose_config("train", ["+experiment=highres"])
    assert base.model.parts == ["all"] and list(highres.model.parts) == ["organs", "vertebrae", "cardiac", "muscles", "ribs"]
    assert list(highres.model.spacing_mm) == [1.5, 1.5, 1.5]
    assert highres.split == base.split


@pytest.mark.parametrize("name", PRIMARY)
def test_every_primary_config_composes_and_resolves(name, tmp_path):
    cfg = compose_config(name, [f"paths.workspace={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert cfg.paths.workspace == str(tmp_path)


@pytest.mark.parametrize("dataset", ["phantom", "dicom"])
def test_dataset_group(dataset, tmp_path):
    cfg = compose_config("train", [f"dataset={dataset}", f"paths.workspace={tmp_path}"])
    assert cfg.dataset.name == dataset
    if dataset == "phantom":
        assert cfg.dataset.dicom_root == f"{tmp_path}/raw/dicom"


def test_cfg_job_prints_the_resolved_config_with_overrides(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "data_prep.phantom", "--cfg", "job", "--resolve", f"paths.workspace={tmp_path}",
         "n_subjects=3"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    ).stdout
    cfg = OmegaConf.create(out)
    assert cfg.n_subjects == 3 and cfg.out == f"{tmp_path}/raw"


def test_bench_predict_takes_files_as_the_readme_gives_them(tmp_path):
    """``'files={largest: ct.nii.gz}'`` (README, make gpu-check): a mapping from no files at all, not a key added
    to a fixed empty one (Hydra refuses that)."""
    cfg = compose_config("bench_predict", [f"paths.workspace={tmp_path}", "files={largest: /data/ct.nii.gz}",
                                           "cases=[largest]"])
    assert OmegaConf.to_container(cfg.files) == {"largest": "/data/ct.nii.gz"} and list(cfg.cases) == ["largest"]
    assert compose_config("bench_predict", [f"paths.workspace={tmp_path}"]).files is None

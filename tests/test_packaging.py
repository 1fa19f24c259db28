"""The project as a wheel: it carries its configs, its entry points run from any folder, and a training
without an experiment stops with the list of experiments."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from setuptools import find_packages

from totalseg_train.config import experiments

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("totalseg_train", "data_prep", "annotation_loop")


def test_every_package_is_listed_for_the_wheel():
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = find_packages(str(REPO), include=[f"{p}*" for p in PACKAGES])
    assert sorted(listed) == sorted([*found, "totalseg_train.configs"])


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, installed (without dependencies) into its own folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for name in (*PACKAGES, "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    quiet = ["--quiet", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", *quiet, "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(source)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("totalseg_train-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", *quiet, "--target", str(tmp / "site"), str(wheel)],
                   check=True, capture_output=True)
    return tmp


def run_installed(installed: Path, *args: str) -> subprocess.CompletedProcess:
    elsewhere = installed / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(installed / "site")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=elsewhere, env=env)


def test_the_wheel_carries_every_config(installed):
    wheel = next((installed / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"totalseg_train/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")}
    assert len(configs) > 30 and configs <= names
    assert "totalseg_train/data/classes_v1.csv" in names


def test_an_installed_training_config_composes_from_another_folder(installed, tmp_path):
    where = run_installed(installed, "-c", "import totalseg_train.config as c; print(c.CONFIG_DIR)")
    assert where.stdout.strip() == str(installed / "site" / "totalseg_train" / "configs"), where.stderr
    job = run_installed(installed, "-m", "totalseg_train", "+experiment=tiny", f"paths.workspace={tmp_path}",
                        "--cfg", "job", "--resolve")
    assert job.returncode == 0, job.stderr
    cfg = OmegaConf.create(job.stdout)
    assert cfg.model.name == "tiny" and cfg.model.spacing_mm == [10.0, 10.0, 10.0]
    assert cfg.labels_dir == f"{tmp_path}/annotation/final/labels"


def test_a_training_without_an_experiment_stops_and_lists_them(installed, tmp_path):
    run = run_installed(installed, "-m", "totalseg_train", f"paths.workspace={tmp_path}")
    assert run.returncode != 0
    assert "+experiment=" in run.stderr and all(name in run.stderr for name in experiments())
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "nnunet").exists()

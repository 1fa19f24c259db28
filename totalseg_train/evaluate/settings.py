"""Default evaluation settings: configs/evaluate.yaml is their only owner, also for the Python API."""

from __future__ import annotations

from functools import lru_cache

from omegaconf import DictConfig, OmegaConf

from totalseg_train.config import CONFIG_DIR


@lru_cache(maxsize=1)
def evaluation_defaults() -> DictConfig:
    """The evaluate config as written (tolerance_mm, workers, resample, bootstrap.*), unresolved."""
    return OmegaConf.load(CONFIG_DIR / "evaluate.yaml")

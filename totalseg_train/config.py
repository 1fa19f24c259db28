"""Where the Hydra configs live and how code outside an entry point composes them."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a primary config the way its entry point would, without running it.

    Inside a running Hydra app (a stage composing another stage's config) Hydra is already
    initialised on the same config folder, so compose directly.
    """
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))

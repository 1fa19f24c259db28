"""Where the Hydra configs live and how code outside an entry point composes them."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

_PACKAGE = Path(__file__).resolve().parent
# An installed wheel carries the configs inside the package (pyproject.toml maps configs/ there); a source
# checkout keeps them at the repository root, beside the packages.
CONFIG_DIR = next((p for p in (_PACKAGE / "configs", _PACKAGE.parent / "configs") if p.is_dir()),
                  _PACKAGE.parent / "configs")
CONFIG_PATH = str(CONFIG_DIR)  # every entry point's @hydra.main(config_path=...): absolute, so any folder works


def experiments() -> list[str]:
    """The experiments a training can name (+experiment=...)."""
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a primary config the way its entry point would, without running it.

    Inside a running Hydra app (a stage composing another stage's config) Hydra is already
    initialised on the same config folder, so compose directly.
    """
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))

"""What the engine adds to nnU-Net's own wandb runs: the resolved config and the final test summary.

nnU-Net (``nnUNet_wandb_enabled=1``) starts one run per part model in the model's fold folder and logs
its curves there. The engine finishes that run after training (nnU-Net leaves it open, and wandb would
hand the next part the same run) and later resumes it by id to add the config and the test summary.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def finish_active_run() -> None:
    import wandb  # here, not at the top: every stage that imports the engine would pay wandb's 0.5 s start-up

    if wandb.run is not None:
        wandb.finish()


def nnunet_run_id(fold_dir: str | Path) -> str | None:
    """Id of the wandb run nnU-Net started in a fold folder (``wandb/latest-run/run-<id>.wandb``)."""
    latest = Path(fold_dir) / "wandb" / "latest-run"
    files = sorted(latest.glob("run-*.wandb")) if latest.is_dir() else []
    return files[0].stem.removeprefix("run-") if files else None


def add_to_nnunet_run(fold_dir: str | Path, cfg: DictConfig, config: dict | None = None,
                      summary: dict | None = None) -> str | None:
    """Resume the part's nnU-Net run and add config entries and summary values; returns the run id."""
    run_id = nnunet_run_id(fold_dir)
    if run_id is None:
        return None
    finish_active_run()
    import wandb

    run = wandb.init(project=str(cfg.logger.project), entity=cfg.logger.entity or None, dir=str(fold_dir),
                     id=run_id, resume="allow", mode=str(cfg.logger.mode))
    if config:
        run.config.update(config, allow_val_change=True)
    if summary:
        run.summary.update(summary)
    run.finish()
    return run_id

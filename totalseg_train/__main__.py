"""python -m totalseg_train +experiment=highres|fast|tiny: train an experiment and score its test split.

Overrides: any config value, e.g. ``device=cpu``, ``part=organs`` (one part model: a launcher sweep runs
``python -m totalseg_train -m +experiment=highres part=organs,vertebrae,cardiac,muscles,ribs
hydra/launcher=slurm``), ``resume=false`` (a killed training starts again at
epoch 0 instead of continuing from its latest checkpoint), ``logger=wandb``. ``--cfg job`` prints the
resolved config without running.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH, experiments


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.model, "name"):
        sys.exit("No experiment named: add +experiment=NAME, one of " + ", ".join(experiments())
                 + " (configs/experiment/; tiny is a few CPU minutes, fast and highres are the paper's models)")
    # nnU-Net reads some settings when first imported: set its environment before importing the engine.
    from totalseg_train.engine.environment import configure_nnunet

    configure_nnunet(cfg)
    from totalseg_train.engine import run
    from totalseg_train.engine.training import TrainedWithOtherSettings

    try:
        summary = run(cfg)
    except TrainedWithOtherSettings as err:
        sys.exit(f"error: {err}")
    counts = summary["split"]
    print(f"{summary['experiment']}: train {counts['train']}, validation {counts['val']}, test {counts['test']}")
    for part, record in summary["parts"].items():
        dice = record.get("validation_dice")
        state = (f"{record['epochs']} epochs, validation Dice {'n/a' if dice is None else f'{dice:.3f}'}"
                 if record["trained"] else "not trained yet")
        print(f"  {part}: {state}")
    overall = (summary["evaluation"] or {}).get("overall")
    if overall:
        print(f"  test split: mean Dice {overall['dice']['mean']:.3f}, mean NSD {overall['nsd']['mean']:.3f}")
        for group, scores in summary["evaluation"].get("by_contrast", {}).items():
            print(f"    {group} subjects ({scores['n_subjects']}): mean Dice {scores['dice']:.3f}")
    if summary["predictions"]:
        print(f"  test predictions: {summary['predictions']['dir']}")
    print(f"  summary: {summary['config']['paths']['results']}/{summary['experiment']}/run_summary.json")


if __name__ == "__main__":
    main()

"""python -m totalseg_train.aging [statistics=FILE] [by_sex=true]: the age analysis of the statistics table."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from totalseg_train.aging.study import run
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH


@hydra.main(config_path=CONFIG_PATH, config_name="aging", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    print(f"aging study: {result['subjects_analysed']} subjects ({result['subjects_without_age']} without age left "
          f"out), {result['tests']} tests, {result['significant']} significant (Bonferroni, P < {result['threshold']:g})")
    for row in result["paper"].itertuples():
        ours = "n/a" if row.rs is None or row.rs != row.rs else f"{row.rs:+.2f}"
        print(f"  {row.class_name:<18} {row.measure:<9} rs {ours} (paper {row.paper_rs:+.2f}), n={row.n}")
    print(f"  {cfg.out}/correlations.csv, scatter_strongest.png, rs_heatmap.png")


if __name__ == "__main__":
    main()

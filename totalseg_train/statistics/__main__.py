"""python -m totalseg_train.statistics [labels_dir=DIR images_dir=DIR | model=<results>/<exp>] [shard.index=i shard.count=n]"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.shards import Shard
from totalseg_train.statistics.stage import ERROR, STATISTICS_FILE, run


@hydra.main(config_path=CONFIG_PATH, config_name="statistics", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    counts = report.status.value_counts()
    print(f"statistics of {len(report)} subject(s): {int(counts.get('measured', 0))} measured, "
          f"{int(counts.get('reused', 0))} done before, {int(counts.get(ERROR, 0))} not measured (see run table)")
    shard = Shard.from_config(cfg.shard)
    if not shard.whole:
        print(f"shard {shard.index} of {shard.count} done; the last shard of the sweep (or a run without a shard) "
              f"gathers {cfg.out}/{STATISTICS_FILE}")
    else:
        print(f"  {cfg.out}/{STATISTICS_FILE}")
    if counts.get(ERROR, 0) == len(report) and len(report):
        raise SystemExit("no subject could be measured")


if __name__ == "__main__":
    main()

"""python -m totalseg_train.report [paths.workspace=DIR]: the paper's tables and figures (make tables)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.report.build import build_report


@hydra.main(config_path=CONFIG_PATH, config_name="report", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    page = build_report(cfg)
    print(f"paper tables: {page} (Markdown: {page.with_name('index.md')}; CSV and PNG files beside it)")


if __name__ == "__main__":
    main()

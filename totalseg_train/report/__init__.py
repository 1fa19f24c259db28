"""The paper's tables and figures from a workspace's runs, beside the published values (``make tables``).

``build_report(cfg)`` reads what the stages left (curation's tables, each experiment's scores.parquet and model,
the bootstrap rounds, the runtime measurements, the aging study, QA sheets by path) and writes
``reports/paper/``: index.md, a self-contained index.html, tables/*.csv and figures/*.png.
"""

from totalseg_train.report.build import build_report

__all__ = ["build_report"]

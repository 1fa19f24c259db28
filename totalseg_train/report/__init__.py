"""The paper's tables and figures from a workspace's runs, beside the published values (``make tables``).

``build_report(cfg)`` reads what the stages left (curation's tables, each experiment's scores.parquet and model,
the bootstrap rounds, the runtime measurements, the aging study, QA sheets by path) and writes
``reports/paper/``: index.md, a self-contained index.html, tables/*.csv and figures/*.png.
"""

__all__ = ["build_report"]


def __getattr__(name: str):
    # Imported on first use: a stage that needs one of the report's modules (curation writes the characteristics
    # table) must not pay for torch and nnU-Net, which the experiments' pages import.
    if name == "build_report":
        from totalseg_train.report.build import build_report

        return build_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

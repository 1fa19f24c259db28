"""python -m data_prep.audit: search a whole workspace for identifying data and for subjects without consent.

The identifying values are those of every series folder's DICOM header under ``dataset.dicom_root`` and the
original UIDs in the private key (``totalseg_train.identifying_data``). Every file under the workspace except the
inputs and the private key folder is searched. Each finding names the file and the kind of value, never the
value. The exit status is 1 when anything is found.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.identifying_data import Finding, audit, identifying_values
from totalseg_train.subject_traces import read_subject_list


def run_audit(cfg: DictConfig) -> list[Finding]:
    workspace = Path(cfg.paths.workspace)
    values = identifying_values(Path(cfg.dataset.dicom_root), Path(cfg.key_csv))
    withdrawn = read_subject_list(Path(cfg.withdrawn_csv))
    return audit(workspace, values, [Path(p) for p in cfg.skip], withdrawn,
                 [Path(p).resolve() for p in cfg.withdrawn_may_name])


@hydra.main(config_path=CONFIG_PATH, config_name="audit", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    findings = run_audit(cfg)
    if not findings:
        print(f"audit of {cfg.paths.workspace}: no identifying value and no withdrawn subject found "
              f"(inputs in {cfg.dataset.dicom_root}; {', '.join(map(str, cfg.skip))} not searched)")
        return
    for f in findings:
        print(f"{f.path}: {f.kind}", file=sys.stderr)
    files = len({f.path for f in findings})
    sys.exit(f"audit FAILED: {len(findings)} findings in {files} files (values not shown; see the list above)")


if __name__ == "__main__":
    main()

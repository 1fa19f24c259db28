"""python -m data_prep.phantom out=DIR n_subjects=N seed=S: generate a phantom CT cohort."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from data_prep.phantom.cohort import generate_cohort
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH


@hydra.main(config_path=CONFIG_PATH, config_name="phantom", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    summary = generate_cohort(cfg)
    index = summary.index
    print(f"phantom cohort in {summary.out}")
    print(f"  {summary.n_patients} patients, {summary.n_exams} exams, {summary.n_series} series "
          f"({summary.n_generated} exams generated now) in {summary.seconds:.1f} s")
    print(f"  eligible CT series: {int(index['eligible'].sum())}; by expected curation decision:")
    for decision, count in index["expected"].value_counts().items():
        print(f"    {decision:<22} {count}")
    print(f"  DICOM:   {summary.out / 'dicom'}")
    print(f"  consent: {summary.out / 'consent.csv'}")
    print(f"  truth:   {summary.out / 'truth'} (index.csv; read only by evaluation and the simulated annotator)")


if __name__ == "__main__":
    main()

"""python -m data_prep.curate: curate a DICOM folder into pseudonymised NIfTI subjects (see configs/curate.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from data_prep.curate.pipeline import CHARACTERISTICS, curate
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH


@hydra.main(config_path=CONFIG_PATH, config_name="curate", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    s = curate(cfg)
    if not s.shard.whole:
        print(f"curation shard {s.shard.index} of {s.shard.count}: {s.n_converted} images converted now; the cohort "
              f"has {s.n_subjects} subjects; the last shard of the sweep writes the tables in {s.curated}")
        return
    print(f"curated cohort in {s.curated}")
    print(f"  header scan: {s.n_files} files ({s.n_parsed} parsed, the others unchanged) in {s.scan_seconds:.1f} s "
          f"({s.n_files / max(s.scan_seconds, 1e-9):.0f} files/s); {s.n_problem_files} not usable "
          f"(listed in {cfg.paths.private}/unreadable_files.csv)")
    print(f"  {s.n_series + s.n_without_consent} series, {s.n_without_consent} of patients without research consent "
          f"(not kept); {s.n_subjects} subjects included, {s.n_converted} converted now, {s.n_removed} images removed")
    for reason, count in sorted(s.reasons.items(), key=lambda kv: -kv[1]):
        print(f"    excluded {reason:<22} {count}")
    print(f"  subjects: {s.curated}/subjects.csv; every series with its decision: {s.curated}/series.parquet")
    print(f"  key (identifying, keep private): {cfg.paths.private}/pseudonym_key.csv")
    if s.withdrawn:
        print(f"  consent withdrawn: {len(s.withdrawn)} subjects retired ({s.curated}/withdrawn.csv); remove them "
              f"from every later stage's output with: python -m annotation_loop.withdraw paths.workspace="
              f"{cfg.paths.workspace}")
    print(f"  characteristics: {cfg.paths.reports}/{CHARACTERISTICS}.md")


if __name__ == "__main__":
    main()

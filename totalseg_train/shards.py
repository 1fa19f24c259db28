"""``shard.index`` / ``shard.count``: the share of a cohort one job of a cluster sweep works on.

A subject belongs to shard ``crc32(subject_id) mod count``, so its shard never changes when subjects join or
leave the cohort or the folder lists them in another order, and every shard of a 4000-subject cohort gets about
the same number. Shards are numbered 0..count-1, as a job array's task ids
(``-m 'shard.index=range(0,16)' shard.count=16``). ``shard.count=1`` (the default) is the whole cohort.

A shard job writes its own part files in ``<out>/shards/`` (``<table>_<index>of<count>.<ext>``), never the
cohort's tables. The job that finds every part of its sweep written gathers them into the cohort's tables by
running the stage once more on the whole cohort, which reuses each part's finished work; a run without a
shard does the same at any time (the ``merge`` step), so a lost or repeated job costs nothing but its share.
A job of a Hydra multirun marks its part with the sweep (``<part>.sweep``: the sweep's folder), and counts only
parts of its own sweep, so that the parts an earlier sweep of the same count left do not start the merge
before this sweep's jobs are done.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from totalseg_train.atomic import write_text
from totalseg_train.stage_lock import stage_lock

Result = TypeVar("Result")

PARTS_DIR = "shards"


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"shard.index={self.index} shard.count={self.count}: need 0 <= index < count "
                             "(shards are numbered 0..count-1)")

    @classmethod
    def from_config(cls, node) -> Shard:
        """From a config's ``shard`` node (``index``, ``count``); None or no node: the whole cohort."""
        if node is None:
            return cls()
        try:
            return cls(int(node["index"]), int(node["count"]))
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"shard: expected whole numbers shard.index and shard.count ({err})") from None

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def name(self) -> str:
        return f"{self.index}of{self.count}"

    def holds(self, subject_id: str) -> bool:
        return zlib.crc32(subject_id.encode()) % self.count == self.index

    def select(self, subject_ids: Iterable[str]) -> list[str]:
        """The subjects of this shard (all of them for the whole cohort), sorted."""
        return sorted(s for s in subject_ids if self.holds(s))

    def lock(self, stage: str) -> str:
        """The stage's lock name for this shard: the shards of a sweep run side by side, each once."""
        return stage if self.whole else f"{stage}-shard-{self.index}-of-{self.count}"

    def part(self, folder: str | Path, stem: str, suffix: str) -> Path:
        """This shard's part file ``<folder>/shards/<stem>_<index>of<count><suffix>``."""
        return Path(folder) / PARTS_DIR / f"{stem}_{self.name}{suffix}"

    def sweep_done(self, folder: str | Path, stem: str, suffix: str, sweep: str | None = None) -> bool:
        """Whether every shard of this sweep (same count; with ``sweep``: parts marked with it) wrote its part."""
        parts = [Shard(i, self.count).part(folder, stem, suffix) for i in range(self.count)]
        return all(p.is_file() and (sweep is None or _marker(p).is_file() and _marker(p).read_text() == sweep)
                   for p in parts)


def _marker(part: Path) -> Path:
    return part.with_name(f"{part.name}.sweep")


def current_sweep() -> str | None:
    """The Hydra multirun this job belongs to (its sweep folder), or None outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    config = HydraConfig.get()
    return str(Path(config.sweep.dir).absolute()) if config.mode == RunMode.MULTIRUN else None


def part_files(folder: str | Path, stem: str, suffix: str) -> list[tuple[Shard, Path]]:
    """Every shard part of a table in ``folder`` (of any sweep) with its shard, oldest first: a newer part's
    row wins."""
    found = []
    for path in Path(folder, PARTS_DIR).glob(f"{stem}_*of*{suffix}"):
        index, _, count = path.name[len(stem) + 1:-len(suffix)].partition("of")
        if index.isdigit() and count.isdigit() and int(index) < int(count):
            found.append((Shard(int(index), int(count)), path))
    return sorted(found, key=lambda part: part[1].stat().st_mtime_ns)


def input_key(files: Iterable[str | Path | None], settings: object) -> str:
    """What a part's finished work was computed from: each file's size and modification time ((-1, -1) for a
    missing one or None) and the settings. A merge reuses the work only while the key is unchanged."""
    states = []
    for path in files:
        try:
            stat = Path(path).stat() if path is not None else None
        except FileNotFoundError:
            stat = None
        states.append((stat.st_size, stat.st_mtime_ns) if stat else (-1, -1))
    return json.dumps([states, settings], sort_keys=True, default=str)


def run_sharded(work: Callable[[Shard], Result], shard: Shard, out_dir: str | Path, stage: str, part_stem: str,
                part_suffix: str = ".csv", return_merged: bool = True, sweep: str | None = None) -> Result:
    """Run a stage's ``work`` for ``shard`` under the stage's lock of that shard (the shards of a sweep run side by
    side, each once; the whole cohort takes the stage's own lock). The job that then finds every part
    (``part_stem`` + ``part_suffix``) of its sweep written merges: ``work(Shard())`` under the stage's lock,
    waiting for a job finishing at the same moment (which then finds the work done). ``sweep``: the sweep the
    job belongs to (default: its Hydra multirun's, none outside one). Returns the merge's result, or the
    shard's where it did not merge or ``return_merged`` is false."""
    if shard.whole:
        with stage_lock(out_dir, stage):
            return work(shard)
    sweep = sweep if sweep is not None else current_sweep()
    with stage_lock(out_dir, shard.lock(stage)):
        result = work(shard)
        write_text(_marker(shard.part(out_dir, part_stem, part_suffix)), sweep or "")
    if not shard.sweep_done(out_dir, part_stem, part_suffix, sweep):
        return result
    with stage_lock(out_dir, stage, wait=True):
        merged = work(Shard())
    return merged if return_merged else result

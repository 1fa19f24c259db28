"""``shard=i/n``: the share of a cohort one job of a cluster job array works on.

A subject belongs to shard ``crc32(subject_id) mod n``, so its shard never changes when subjects
join or leave the cohort, and every shard of a 4000-subject cohort gets about the same number. Shards
are numbered 0..n-1, as a job array's task ids (``shard=$SLURM_ARRAY_TASK_ID/16``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n); None or empty -> None (the whole cohort); ValueError for anything else."""
    if text is None or str(text).strip() == "":
        return None
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard={text!r}: expected i/n, e.g. shard=0/16") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard={text!r}: need 0 <= i < n (shards are numbered 0..n-1)")
    return i, n


def in_shard(subject_id: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    i, n = shard
    return zlib.crc32(subject_id.encode()) % n == i


def select_shard(subject_ids: Iterable[str], shard: str | None) -> list[str]:
    """The subjects of one shard (all of them without a shard), sorted."""
    parsed = parse_shard(shard)
    return sorted(s for s in subject_ids if in_shard(s, parsed))

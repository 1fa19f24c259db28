"""The bootstrap round's decisions that need no training: schedule, batch size, ranking."""

from __future__ import annotations

import pandas as pd
import pytest

from annotation_loop.round import RoundError, batch_size, next_scheduled
from annotation_loop.worklist import rank
from totalseg_train.config import compose_config


def test_next_scheduled_round_follows_the_schedule():
    finished = [{"n_reviewed": 5, "finished_at": "t"}, {"n_reviewed": 20, "finished_at": None}]
    assert next_scheduled([5, 20, 100, 1000], []) == 5
    assert next_scheduled([5, 20, 100, 1000], finished) == 20  # an unfinished round is resumed
    with pytest.raises(RoundError, match="every scheduled round"):
        next_scheduled([5], finished)


def test_batch_reaches_the_next_scheduled_n():
    cfg = compose_config("round")
    assert list(cfg.bootstrap.schedule) == [5, 20, 100, 1000]
    assert batch_size(cfg, 5) == 15 and batch_size(cfg, 100) == 900 and batch_size(cfg, 1000) == 1000
    assert batch_size(compose_config("round", ["bootstrap.batch_size=7"]), 5) == 7


def test_worklist_puts_most_expected_work_first():
    table = pd.DataFrame({"subject_id": ["a", "b", "c", "d"], "n_flags": [0, 3, 0, 1],
                          "entropy": [0.1, 0.1, 0.9, 0.5]})
    ranked = rank(table, flag_weight=1.0, entropy_weight=1.0)
    assert list(ranked.subject_id) == ["b", "c", "d", "a"]
    assert list(ranked["rank"]) == [1, 2, 3, 4]
    only_entropy = rank(table, flag_weight=0.0, entropy_weight=1.0)
    assert list(only_entropy.subject_id) == ["c", "d", "a", "b"]  # ties keep subject order


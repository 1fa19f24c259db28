"""How a command ends when it cannot go on for a reason the user can act on: one line, no traceback.

Another copy of the stage holding its folder (``StageRunning``) and a file that could not be written for
lack of space (``WriteError``) stop every stage the same way: ``error: <message>`` on stderr, exit status 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

from totalseg_train.atomic import WriteError
from totalseg_train.stage_lock import StageRunning

T = TypeVar("T")
STOPS = (StageRunning, WriteError)


def exits_cleanly(main: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Wrap a Hydra task function (under ``@hydra.main``) so that ``STOPS`` end it with their message."""

    @functools.wraps(main)
    def run(cfg: DictConfig) -> T:
        try:
            return main(cfg)
        except STOPS as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return run

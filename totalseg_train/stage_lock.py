"""One run of a stage at a time on its output folder: an exclusive lock on a file beside that folder.

Two copies of a stage writing one folder would race on its tables and files. The second copy stops at
once with an error naming the lock and its holder, or, where waiting is the right answer (the last part
job of a training sweep finishing while another runs the shared final step), waits for the first. The
kernel releases a lock when its process dies, even by kill -9, so a crashed run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from totalseg_train.atomic import remove_stale_temporaries


class StageRunning(RuntimeError):
    """Another process runs the stage on the same folder."""


def lock_file(folder: str | Path, stage: str) -> Path:
    """The lock of ``stage`` on ``folder``: ``.<folder name>.<stage>.lock`` beside the folder, which keeps the
    folder itself to the stage's outputs (later stages list it)."""
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.{stage}.lock"


@contextmanager
def exclusive(lock_path: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold ``lock_path`` for the block; StageRunning when another process holds it (``wait``: block until it
    is free instead)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise StageRunning(f"{what} is already running ({holder}); wait for it to finish. "
                               f"Lock file: {lock_path}") from None
        os.ftruncate(fh.fileno(), 0)
        try:  # who holds it, for the message of a second copy; a full disk must not stop the stage here
            os.pwrite(fh.fileno(), f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}".encode(), 0)
        except OSError:
            pass
        try:
            yield
        finally:
            os.ftruncate(fh.fileno(), 0)
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def stage_lock(folder: str | Path, stage: str, wait: bool = False) -> Iterator[None]:
    """``exclusive`` on ``lock_file(folder, stage)``, described as ``<stage> on <folder>``. Once held, the
    temporaries that killed runs left in the folder are removed (those of running processes stay)."""
    with exclusive(lock_file(folder, stage), f"{stage} on {folder}", wait):
        remove_stale_temporaries(folder)
        yield

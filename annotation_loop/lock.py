"""One bootstrap round at a time: an exclusive lock on a file in the annotation folder.

The kernel releases the lock when its process dies, even by kill -9, so a crashed round never
blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path


class RoundLocked(RuntimeError):
    """Another round holds the lock."""


@contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RoundLocked(f"{what} is already running ({holder}); wait for it to finish. "
                              f"Lock file: {lock_path}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)

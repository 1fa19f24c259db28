"""Write files so that an interrupted run never leaves a half-written one behind.

Everything is written under a temporary name in the target folder and renamed into place
when complete; a rename within one file system is atomic. A write that fails for lack of space
(a full disk, a quota) leaves the previous version in place and raises WriteError naming the file:
it stops the stage, since every later write would fail too.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

TMP_MARK = ".tmp-"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(Exception):
    """A file could not be written completely (a full disk, a quota); the message names the file.

    Not an OSError, so that no per-subject handler takes it for one subject's bad input and goes on.
    """


def no_space(path: str | Path, reason: str) -> WriteError:
    free = shutil.disk_usage(Path(path).parent).free
    return WriteError(f"{path}: not written: {reason} ({free / 1e6:.1f} MB free on its disk); "
                      "the previous version, if any, is kept")


def _temp_sibling(path: Path) -> Path:
    # Keep the full suffix (.nii.gz, .parquet) so that writers choosing a format by suffix still work.
    return path.with_name(f"{TMP_MARK}{os.getpid()}-{path.name}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        try:
            yield tmp
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise no_space(path, os.strerror(err.errno)) from None
            raise
        if tmp.is_dir() and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table(df: pd.DataFrame, path: str | Path, sep: str = ",") -> None:
    """Write a table as CSV (separated by ``sep``) or parquet (chosen by suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=False, sep=sep)
        else:
            raise ValueError(f"{path}: unsupported table format {path.suffix!r} (use .csv or .parquet)")


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that names a temporary (``.tmp-<pid>-...``) still runs: it may be writing it.

    A pid is reused once the kernel's counter wraps (each thread takes a number too): a process counts as the
    writer only if it started before the temporary was last written.
    """
    pid = tmp.name[len(TMP_MARK):].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        started = _process_start(int(pid))
    except (FileNotFoundError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return started is None or started <= tmp.lstat().st_mtime + 0.05


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds, to 10 ms) from /proc; None where there is no /proc (it
    exists: os.kill found it). FileNotFoundError or ProcessLookupError when there is no such process."""
    proc = Path("/proc")
    if not (proc / "uptime").is_file():
        os.kill(pid, 0)
        return None
    stat = (proc / str(pid) / "stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
    uptime = float((proc / "uptime").read_text().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries left by a killed run (not those of a process still running: another stage may be
    writing into a shared folder such as reports/); returns how many were removed."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    removed = 0
    for tmp in folder.rglob(f"{TMP_MARK}*"):
        if _writer_alive(tmp):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed

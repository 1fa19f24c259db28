"""Write files so that an interrupted run never leaves a half-written one behind.

Everything is written under a temporary name in the target folder and renamed into place
when complete; a rename within one file system is atomic.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

TMP_MARK = ".tmp-"


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
        yield tmp
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


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write a table as CSV or parquet (chosen by suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise ValueError(f"{path}: unsupported table format {path.suffix!r} (use .csv or .parquet)")


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries left by a killed run; returns how many were removed."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    removed = 0
    for tmp in folder.rglob(f"{TMP_MARK}*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed

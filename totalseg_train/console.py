"""What a stage shows on the console: our progress bars and summaries; the libraries' own output goes to a log.

nnU-Net prints (it does not log) its plans, every epoch's losses and its search paths, and its worker
processes print too, to the file descriptors they inherit. ``captured`` therefore redirects file
descriptors 1 and 2 themselves, not only ``sys.stdout``: everything written in the block, by this process,
its C code or its children, lands in the stage's log file. Our own progress bars write to ``terminal()``,
which is the console whether or not a block is being captured.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

NNUNET_LOG = "nnunet.log"
TAIL_LINES = 30  # lines of the log shown on the console when a captured block fails
_terminal: TextIO | None = None  # the console while a block is captured


def run_log_dir() -> Path | None:
    """The running Hydra stage's log folder (``<workspace>/logs/<stage>/<time>/``); None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    output_dir = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)  # unset when composed
    return Path(output_dir) if output_dir else None


def stage_log(verbose: bool, name: str = NNUNET_LOG) -> Path | None:
    """The log file that takes the libraries' console output in this stage run: ``name`` in the run's log
    folder; None (leave the console alone) with ``verbose`` or outside a Hydra run (a library call)."""
    folder = None if verbose else run_log_dir()
    return None if folder is None else folder / name


def terminal() -> TextIO:
    """The console for our progress bars: the real one even inside a captured block."""
    return _terminal or sys.stderr


def log_tail(log_file: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log (progress bars' carriage returns split into lines)."""
    with open(log_file, errors="replace") as text:
        return list(deque((line.rstrip() for part in text for line in part.split("\r") if line.strip()),
                          maxlen=lines))


@contextmanager
def captured(log_file: Path | None) -> Iterator[None]:
    """Send whatever the block writes to stdout and stderr (file descriptors, so worker processes and C code
    too) to the end of ``log_file``; None: leave the console alone. When the block raises, the log's last
    lines and its path are printed on the console before the error goes on. A nested block writes to the
    outer one's log."""
    global _terminal
    if log_file is None or _terminal is not None:
        yield
        return
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log = open(log_file, "a", buffering=1)  # append mode: every writer of the file adds at its end
    for fd in saved:
        os.dup2(log.fileno(), fd)
    _terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    failed = False
    try:
        # Python-level too, for a sys.stdout that is not file descriptor 1 (a notebook's, pytest's).
        with redirect_stdout(log), redirect_stderr(log):
            yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        log.close()
        for fd, original in saved.items():
            os.dup2(original, fd)
            os.close(original)
        _terminal.close()
        _terminal = None
        if failed:
            tail = log_tail(log_file)
            print("\n".join([f"--- last {len(tail)} lines of {log_file} ---", *tail, "---"]), file=sys.stderr)

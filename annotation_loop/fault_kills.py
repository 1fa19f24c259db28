"""kill -9 at random moments: each stage of the pipeline killed again and again, rerun, and compared with runs
that were never interrupted (``python -m annotation_loop.fault_kills``, part of ``make robustness``).

A CPU-sized phantom workspace is taken through the stages in order: curation, truth export, QA, ingest, a
bootstrap round, training (with its test-split prediction) and evaluation. Each stage starts from the state
the previous one left, and is run

* twice without interruption (files that differ between those two runs hold times and durations: they are
  checked for presence only), and
* as a chain of attempts from the same state: an attempt is killed with SIGKILL (its whole process group,
  nnU-Net's workers included) at a seeded random moment within the stage's uninterrupted duration; after
  every kill, each file the attempt left under its final name must be whole (NIfTI gzip CRC and length,
  Parquet, CSV, JSON, PNG, SQLite integrity, PyTorch checkpoints); then the next attempt starts. A chain ends
  with an attempt that finishes; chains repeat until the stage has been killed ``kills`` times.

The end state of every chain is compared file by file with the uninterrupted run: the same files, the same
bytes (except the time-holding files and, for the two stages that train, what is computed from the weights:
a resumed training is not bitwise the training that ran through), no temporary left, the ledger's subjects and
events as in the uninterrupted run (no duplicate row, no correction lost), and a training's checkpoint at
its full epoch count. Exit status 1 on any difference.

Stages are driven as a user drives them, through their commands, so this module imports none of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import blosc2
import numpy as np
import pandas as pd
import torch
from PIL import Image

from totalseg_train.atomic import TMP_MARK
from totalseg_train.images import ImageFileError, check_nifti_complete

PY = sys.executable
LEDGER = "annotation/ledger.sqlite"
# Hydra's run logs (one folder per attempt), lock files, SQLite's write-ahead log of the ledger (part of the
# database, read through it: a killed process leaves it for the next one to replay).
# nnU-Net's own training log is named by its start time: one more per resumed attempt.
IGNORED = ("logs/*", "*.lock", "*.sqlite-wal", "*.sqlite-shm", "*/training_log_*.txt")
# Tables and summaries that record what a run did, compared without those columns or keys: a resumed training's
# export finds its subjects exported already ("skipped" where the uninterrupted run says "exported"), a resumed
# curation parses only the headers its cache lacks and converts fewer series now, in other seconds (two
# uninterrupted runs may round to the same ones).
RUN_RECORDS = {"nnunet/raw/*/export.csv": ["status"],
               "curated/curation.json": ["files_parsed", "converted_now", "removed_now", "scan_seconds",
                                         "convert_seconds"]}
# The round's schedule and training, CPU-sized: 5 drawn subjects, a round on them predicting 3 more.
LOOP = ["bootstrap.experiment=tiny", "bootstrap.schedule=[5,8]", "bootstrap.batch_size=3",
        'bootstrap.train_overrides=["data_workers=0","model.seed=0","model.epochs=3",'
        '"model.iterations_per_epoch=10","torch_threads=1","workers=1"]']
TRAIN = ["+experiment=tiny", "device=cpu", "workers=1", "data_workers=0", "torch_threads=1", "model.epochs=3",
         "model.iterations_per_epoch=10", "model.seed=0"]


@dataclass(frozen=True)
class Stage:
    name: str
    command: Callable[[Path], list[str]]
    from_weights: tuple[str, ...] = ()  # files computed from trained weights: presence and validity only


STAGES = (
    Stage("curation", lambda ws: [PY, "-m", "data_prep.curate", f"paths.workspace={ws}", "progress=false"]),
    Stage("truth export", lambda ws: [PY, "-m", "data_prep.phantom.truth_labels", f"paths.workspace={ws}"]),
    Stage("QA", lambda ws: [PY, "-m", "annotation_loop.qa", f"labels_dir={ws}/truth_labels", f"paths.workspace={ws}"]),
    Stage("ingest", lambda ws: [PY, "-m", "annotation_loop.ingest", f"paths.workspace={ws}", *LOOP,
                                f"corrected_dir={ws}/annotation/incoming/simulated"]),
    Stage("bootstrap round", lambda ws: [PY, "-m", "annotation_loop.round", f"paths.workspace={ws}", *LOOP,
                                         "n_reviewed=5"],
          from_weights=("annotation/rounds/*", "annotation/predicted/*", "annotation/worklists/*", "qa/round_*",
                        "reports/bootstrap_rounds.*")),
    Stage("training", lambda ws: [PY, "-m", "totalseg_train", f"paths.workspace={ws}", f"labels_dir={ws}/truth_labels",
                                  *TRAIN],
          from_weights=("results/tiny/*", "nnunet/results/*/validation/*")),
    Stage("evaluation", lambda ws: [PY, "-m", "totalseg_train.evaluate", f"gt_dir={ws}/truth_labels",
                                    f"pred_dir={ws}/results/tiny/predictions", f"out_dir={ws}/results/kill_evaluation",
                                    "workers=1", f"paths.workspace={ws}"]),
)
# Between the stages, not killed: hand out the first subjects to draw and draw them (the simulated annotator).
SETUP_BEFORE = {"ingest": [lambda ws: [PY, "-m", "annotation_loop.start", f"paths.workspace={ws}", *LOOP],
                           lambda ws: [PY, "-m", "annotation_loop.simulate", f"paths.workspace={ws}", *LOOP]]}


class StageFailed(RuntimeError):
    pass


def run_command(command: list[str], log: Path, kill_after: float | None = None) -> tuple[bool, float]:
    """Run ``command`` in its own process group; with ``kill_after``, SIGKILL the group after that many seconds.
    Returns (killed, seconds). StageFailed when it ends with an error on its own."""
    began = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            _reap_group(process.pid)
            return True, time.monotonic() - began
    if process.returncode != 0:
        raise StageFailed(f"{' '.join(command[:3])} exited with {process.returncode}; log: {log}")
    return False, time.monotonic() - began


def _reap_group(pgid: int) -> None:
    """Wait until every process of the killed group is gone (a worker may outlive its parent by a moment)."""
    for _ in range(100):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _ignored(relative: str) -> bool:
    return any(fnmatch(relative, pattern) for pattern in IGNORED)


def files_of(ws: Path) -> dict[str, Path]:
    """Every file of the workspace by relative path, Hydra's logs and lock files aside."""
    found = {}
    for path in ws.rglob("*"):
        relative = str(path.relative_to(ws))
        if path.is_file() and not _ignored(relative):
            found[relative] = path
    return found


def temporaries(ws: Path) -> list[str]:
    return sorted(str(p.relative_to(ws)) for p in ws.rglob(f"{TMP_MARK}*") if not _ignored(str(p.relative_to(ws))))


def whole(path: Path) -> str | None:
    """None when the file reads completely in its format; else what is wrong."""
    name = path.name
    try:
        if name.endswith((".nii.gz", ".nii")):
            check_nifti_complete(path, verify_data=True)
        elif name.endswith(".parquet"):
            pd.read_parquet(path)
        elif name.endswith(".csv"):
            pd.read_csv(path)
        elif name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".png"):
            with Image.open(path) as image:
                image.load()
        elif name.endswith(".sqlite"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                    return "SQLite integrity check failed"
        elif name.endswith(".pth"):
            torch.load(path, map_location="cpu", weights_only=False)
        elif name.endswith(".pkl"):
            with open(path, "rb") as fh:
                pickle.load(fh)
        elif name.endswith(".b2nd"):
            blosc2.open(str(path), mode="r")[:]
        elif name.endswith(".npz"):
            with np.load(path) as arrays:
                for key in arrays.files:
                    arrays[key]
    except (ImageFileError, OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError, sqlite3.Error,
            pd.errors.ParserError, pd.errors.EmptyDataError, KeyError) as err:
        return f"{type(err).__name__}: {str(err)[:200]}"
    return None


def written_since(ws: Path, since: float) -> tuple[int, dict[str, str]]:
    """(files and temporaries written at or after ``since`` (epoch seconds), those of them under their final
    names that are not whole -> what is wrong)."""
    written, broken = 0, {}
    for relative, path in files_of(ws).items():
        if path.stat().st_mtime < since - 1:
            continue
        written += 1
        problem = None if any(part.startswith(TMP_MARK) for part in Path(relative).parts) else whole(path)
        if problem:
            broken[relative] = problem
    return written, broken


def digests(ws: Path) -> dict[str, str]:
    """SHA-256 of every file's content: the bytes, but the ledger as its rows without times (SQLite pages differ
    run to run), nnU-Net's preprocessed arrays (.b2nd) as their voxels (two runs write the same array into
    blosc2 containers that differ byte for byte; measured: 10-11 of a tiny training's 12), run records
    without the columns of ``RUN_RECORDS``."""
    table = {}
    for relative, path in files_of(ws).items():
        if relative == LEDGER:
            table[relative] = ledger_rows(path)
        elif path.name.endswith(".b2nd"):
            array = blosc2.open(str(path), mode="r")[:]
            table[relative] = hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()
        elif dropped := next((c for pattern, c in RUN_RECORDS.items() if fnmatch(relative, pattern)), None):
            if path.suffix == ".json":
                record = {k: v for k, v in json.loads(path.read_text()).items() if k not in dropped}
                content = json.dumps(record, sort_keys=True)
            else:
                content = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=dropped).to_csv(index=False)
            table[relative] = hashlib.sha256(content.encode()).hexdigest()
        else:
            table[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return table


TIMES = {"updated_at", "at", "started_at", "finished_at"}


def ledger_rows(path: Path) -> str:
    """The ledger's tables without their time columns and ids, rows sorted, as one digest."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        parts = []
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"):
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({name})") if row[1] not in TIMES | {"id"}]
            if name == "rounds":
                columns = [c for c in columns if c not in ("metrics", "model", "config")]
            rows = sorted(map(repr, db.execute(f"SELECT {', '.join(columns)} FROM {name}")))
            parts.append(f"{name}:{len(rows)}:" + "|".join(rows))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def ledger_counts(path: Path) -> dict[str, int]:
    """Rows per ledger table, and events repeated (the same move of the same subject recorded twice)."""
    if not path.is_file():
        return {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        counts = {name: db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]
                  for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                            "AND name NOT LIKE 'sqlite_%'")}
        counts["repeated_events"] = db.execute(
            "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM events "
            "GROUP BY subject_id, from_state, to_state, round, source)").fetchone()[0]
    return counts


def reviewed(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT subject_id FROM subjects WHERE state = 'reviewed'")}


@dataclass
class StageResult:
    stage: str
    seconds: float  # one uninterrupted run
    kills: int = 0
    kills_while_writing: int = 0  # kills after the attempt had written a file (the others hit the start-up)
    chains: int = 0
    attempts: int = 0
    broken_after_kill: dict[str, str] = field(default_factory=dict)
    temporaries_left: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    compared: int = 0
    times_only: int = 0  # files that differ between two uninterrupted runs (times, durations)
    from_weights: int = 0
    repeated_ledger_rows: int = 0
    corrections_lost: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.broken_after_kill or self.temporaries_left or self.missing or self.extra or self.differing
                    or self.repeated_ledger_rows or self.corrections_lost or self.notes)


def compare(result: StageResult, stage: Stage, reference: dict[str, str], second: dict[str, str],
            faulted: dict[str, str]) -> None:
    result.missing = sorted(set(reference) - set(faulted))
    result.extra = sorted(set(faulted) - set(reference))
    for relative in sorted(set(reference) & set(faulted)):
        if reference[relative] != second.get(relative):
            result.times_only += 1
        elif any(fnmatch(relative, pattern) for pattern in stage.from_weights):
            result.from_weights += 1
        else:
            result.compared += 1
            if faulted[relative] != reference[relative]:
                result.differing.append(relative)


def final_epoch(ws: Path) -> list[str]:
    """Every final checkpoint whose epoch count differs from the configured 3 (a restarted, not resumed,
    training would still reach it: the trained-with record and resume make it continue)."""
    wrong = []
    for checkpoint in ws.rglob("checkpoint_final.pth"):
        epoch = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"])
        if epoch != 3:
            wrong.append(f"{checkpoint.relative_to(ws)}: epoch {epoch}, not 3")
    return wrong


def kill_stage(stage: Stage, before: Path, live: Path, kills: int, rng: np.random.Generator,
               logs: Path) -> tuple[StageResult, Path]:
    """Reference runs and kill chains of one stage from the state in ``before``, every run in the folder
    ``live`` (files name their workspace: runs are compared in one place). Returns the result and the
    uninterrupted run's end state (moved beside ``before``: the next stage's start)."""
    log = logs / f"{stage.name.replace(' ', '_')}.log"
    _fresh(before, live)
    _, seconds = run_command(stage.command(live), log)
    reference = digests(live)
    expected_counts, expected_reviewed = ledger_counts(live / LEDGER), reviewed(live / LEDGER)
    after = before.with_name(stage.name.replace(" ", "_"))
    live.rename(after)
    _fresh(before, live)
    run_command(stage.command(live), log)
    second = digests(live)
    result = StageResult(stage.name, seconds)
    while result.kills < kills:
        result.chains += 1
        _fresh(before, live)
        while True:
            result.attempts += 1
            started = time.time()
            killed, _ = run_command(stage.command(live), log, kill_after=float(rng.uniform(0.0, seconds)))
            if not killed:
                break
            result.kills += 1
            written, broken = written_since(live, started)
            result.kills_while_writing += written > 0
            for relative, problem in broken.items():
                result.broken_after_kill[f"kill {result.kills}: {relative}"] = problem
        result.temporaries_left += [f"chain {result.chains}: {t}" for t in temporaries(live)]
        chain = StageResult(stage.name, seconds)
        compare(chain, stage, reference, second, digests(live))
        for name in ("missing", "extra", "differing"):
            getattr(result, name).extend(f"chain {result.chains}: {p}" for p in getattr(chain, name))
        result.compared, result.times_only, result.from_weights = chain.compared, chain.times_only, chain.from_weights
        counts = ledger_counts(live / LEDGER)
        result.repeated_ledger_rows += counts.get("repeated_events", 0) + sum(
            max(0, counts.get(t, 0) - expected_counts.get(t, 0)) for t in ("events", "efforts", "rounds", "heart_priors"))
        result.corrections_lost += len(expected_reviewed - reviewed(live / LEDGER))
        result.notes += [f"chain {result.chains}: {w}" for w in final_epoch(live)]
    shutil.rmtree(live)
    return result, after


def _fresh(state: Path, live: Path) -> None:
    """``live`` as a copy of ``state`` (timestamps kept)."""
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(state, live, symlinks=True)


def _once(commands: list[Callable[[Path], list[str]]], before: Path, live: Path, logs: Path, name: str) -> Path:
    """Run commands uninterrupted in ``live`` from ``before``; returns the end state, moved beside ``before``."""
    _fresh(before, live)
    for command in commands:
        run_command(command(live), logs / "setup.log")
    after = before.with_name(name)
    live.rename(after)
    return after


def phantom(n_subjects: int) -> Callable[[Path], list[str]]:
    """The phantom's command: raw DICOM and consent at the demo's coarse grid (6 mm in-plane, 5 mm slices)."""
    return lambda ws: [PY, "-m", "data_prep.phantom", f"paths.workspace={ws}", f"n_subjects={n_subjects}", "seed=0",
                       "pixel_spacing_mm=6.0", "slice_thickness_mm.values=[5.0]", "slice_thickness_mm.weights=[1.0]",
                       "workers=1"]


def run(kills: int, seed: int, n_subjects: int, stages: list[str] | None, work: Path) -> list[StageResult]:
    logs, live, empty = work / "logs", work / "ws", work / "empty"
    logs.mkdir(parents=True, exist_ok=True)
    empty.mkdir()
    rng = np.random.default_rng(seed)
    state = _once([phantom(n_subjects)], empty, live, logs, "phantom")
    results = []
    last = max(i for i, s in enumerate(STAGES) if not stages or s.name in stages)
    for stage in STAGES[: last + 1]:
        if stage.name in SETUP_BEFORE:
            state = _once(SETUP_BEFORE[stage.name], state, live, logs, f"before_{stage.name}")
        if stages and stage.name not in stages:
            state = _once([stage.command], state, live, logs, stage.name.replace(" ", "_"))
            continue
        result, state = kill_stage(stage, state, live, kills, rng, logs)
        results.append(result)
        print(describe(result), flush=True)
    return results


def describe(r: StageResult) -> str:
    status = "ok" if r.ok else "FAILED"
    line = (f"{r.stage:<16} {status:<6} {r.kills} kills ({r.kills_while_writing} after it had written files) in "
            f"{r.chains} chains ({r.attempts} attempts; one run {r.seconds:.1f} s): {len(r.broken_after_kill)} half-written files after a kill, "
            f"{len(r.temporaries_left)} temporaries left, {r.compared} files compared, {len(r.differing)} differ, "
            f"{len(r.missing)} missing, {len(r.extra)} extra; {r.times_only} hold times, {r.from_weights} computed "
            f"from the weights; {r.repeated_ledger_rows} duplicate ledger rows, {r.corrections_lost} corrections lost")
    details = [*r.broken_after_kill.items(), *[(p, "differs") for p in r.differing],
               *[(p, "missing") for p in r.missing], *[(p, "extra") for p in r.extra],
               *[(p, "temporary left") for p in r.temporaries_left], *[(n, "") for n in r.notes]]
    return line + "".join(f"\n    {what}: {why}" for what, why in details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs per stage (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--subjects", type=int, default=8, help="phantom patients (default 8)")
    parser.add_argument("--stage", action="append", choices=[s.name for s in STAGES],
                        help="kill only this stage (repeatable); the others run once, uninterrupted")
    parser.add_argument("--out", type=Path, default=None, help="write the table here as CSV")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a "
                                                                 "temporary folder, removed)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        results = run(args.kills, args.seed, args.subjects, args.stage, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="fault_kills_") as tmp:
            results = run(args.kills, args.seed, args.subjects, args.stage, Path(tmp))
    table = pd.DataFrame([{"stage": r.stage, "seconds": round(r.seconds, 1), "kills": r.kills,
                           "while_writing": r.kills_while_writing, "chains": r.chains,
                           "half_written_after_kill": len(r.broken_after_kill),
                           "temporaries_left": len(r.temporaries_left), "compared": r.compared,
                           "differ": len(r.differing) + len(r.missing) + len(r.extra), "hold_times": r.times_only,
                           "from_weights": r.from_weights, "duplicate_ledger_rows": r.repeated_ledger_rows,
                           "corrections_lost": r.corrections_lost, "ok": r.ok} for r in results])
    print(table.to_string(index=False))
    print(f"{int(table.kills.sum())} kills in {time.monotonic() - began:.0f} s")
    if args.out:
        table.to_csv(args.out, index=False)
    return 0 if table.ok.all() else 1


if __name__ == "__main__":
    sys.exit(main())

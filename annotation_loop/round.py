"""python -m annotation_loop.round n_reviewed=N: one round of the annotation bootstrap.

Trains the configured experiment on the first N reviewed subjects, predicts the next batch of
unlabeled subjects, gives the predictions the heart model's heart sub-parts where it has predicted
them (``annotation_loop.heart_prior``), writes them with label tables for 3D Slicer and ITK-SNAP,
renders their QA sheets and flags, and hands annotators a worklist ranked by expected
correction effort. Each step is recorded in the ledger when done; a killed round re-runs from
the first unfinished step.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from annotation_loop import round_steps
from annotation_loop.heart_prior import give_heart, heart_predictions
from annotation_loop.label_store import LabelStore, link_latest
from annotation_loop.label_tables import write_label_tables
from annotation_loop.ledger import IN_CORRECTION, PREDICTED, UNLABELED, Ledger
from annotation_loop.report import write_round_report
from annotation_loop.start import register_curated, worklist_path, worklists_dir
from annotation_loop.worklist import rank
from totalseg_train.atomic import write_table
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.stage_lock import stage_lock
from totalseg_train.engine.inference import ENTROPY_TABLE
from totalseg_train.engine.training import TrainedWithOtherSettings
from totalseg_train.heart_predictions import heart_class_ids
from totalseg_train.images import nifti_path

STEPS = ("select", "train", "predict", "heart", "tables", "qa", "worklist")


class RoundError(RuntimeError):
    """A round that cannot run as asked (too few reviewed subjects, schedule exhausted)."""


@dataclass
class RoundResult:
    number: int
    n_reviewed: int
    predicted: list[str]
    worklist: Path | None
    skipped_steps: list[str]
    already_finished: bool = False


def next_scheduled(schedule: list[int], rounds: list[dict]) -> int:
    """The first N of the schedule without a finished round."""
    done = {r["n_reviewed"] for r in rounds if r["finished_at"]}
    for n in schedule:
        if n not in done:
            return int(n)
    raise RoundError(f"every scheduled round ({', '.join(map(str, schedule))}) has run; pass n_reviewed=N to run another")


def batch_size(cfg: DictConfig, n: int) -> int:
    """Subjects to predict: configured, or enough to reach the next scheduled N."""
    if cfg.bootstrap.batch_size:
        return int(cfg.bootstrap.batch_size)
    later = [int(s) for s in cfg.bootstrap.schedule if int(s) > n]
    return (later[0] - n) if later else n


def previous_model(rounds: list[dict], number: int, experiment: str) -> str | None:
    """The model of the latest earlier round of the same experiment (the weights a warm start continues)."""
    earlier = [r for r in rounds if r["number"] < number and r["model"] and r["experiment"] == experiment]
    return earlier[-1]["model"] if earlier else None


def _round_number(ledger: Ledger, n: int) -> tuple[int, bool]:
    """(round number, already finished) for a round on N reviewed subjects."""
    for r in ledger.rounds():
        if r["n_reviewed"] == n:
            return r["number"], bool(r["finished_at"])
    return len(ledger.rounds()) + 1, False


def _give_heart(cfg: DictConfig, ledger: Ledger, store: LabelStore, number: int, batch: list[str]) -> list[str]:
    """The heart step: the batch's predictions take their heart sub-parts from the heart model where it
    predicted the subject; recorded in the ledger. Returns the subjects given them."""
    hearts = heart_predictions(cfg)
    given = [s for s in batch if s in hearts and give_heart(hearts[s], store.predicted(number, s))]
    with ledger.transaction() as db:
        for subject_id in given:
            ledger.record_heart_prior(db, subject_id, number, hearts[subject_id].model,
                                      str(store.predicted(number, subject_id)))
    return given


def run_round(cfg: DictConfig) -> RoundResult:
    annotation = Path(cfg.paths.annotation)
    with stage_lock(annotation, "round"):
        ledger = Ledger(cfg.bootstrap.ledger)
        try:
            return _run_locked(cfg, ledger, annotation)
        finally:
            ledger.close()


def _run_locked(cfg: DictConfig, ledger: Ledger, annotation: Path) -> RoundResult:
    register_curated(ledger, Path(cfg.bootstrap.subjects_csv), int(cfg.bootstrap.seed))
    n = int(cfg.n_reviewed) if cfg.n_reviewed is not None else next_scheduled(list(cfg.bootstrap.schedule), ledger.rounds())
    number, finished = _round_number(ledger, n)
    if finished:  # a finished round is not run again: re-running a stage is safe
        rdir = LabelStore(annotation).round_dir(number)
        batch = list(pd.read_csv(rdir / "batch.csv", dtype=str).subject_id)
        return RoundResult(number, n, batch, worklist_path(annotation, number), list(STEPS), already_finished=True)
    reviewed = ledger.reviewed_in_order()
    if len(reviewed) < n and ledger.round(number) is None:
        raise RoundError(f"round on N={n} needs {n} reviewed subjects; {len(reviewed)} are reviewed "
                         f"({ledger.counts()[IN_CORRECTION]} in correction). Ingest corrections first.")
    experiment = str(cfg.bootstrap.experiment)
    ledger.start_round(number, n, experiment, OmegaConf.to_container(cfg, resolve=True))
    store = LabelStore(annotation)
    rdir = store.round_dir(number)
    done = list(ledger.round(number)["steps"])

    if "select" not in done:
        train_ids = reviewed[:n]
        labels = rdir / "labels"
        for subject_id in train_ids:
            # The round trains on the label versions final now; later corrections don't change it.
            link_latest(store.current(subject_id), nifti_path(labels, subject_id))
        queue = [s.subject_id for s in ledger.subjects(UNLABELED)][: batch_size(cfg, n)]
        write_table(pd.DataFrame({"subject_id": train_ids}), rdir / "train_subjects.csv")
        write_table(pd.DataFrame({"subject_id": queue}), rdir / "batch.csv")
        ledger.finish_step(number, "select", {"n_train": len(train_ids), "n_batch": len(queue)})
    train_ids = list(pd.read_csv(rdir / "train_subjects.csv", dtype=str).subject_id)
    batch = list(pd.read_csv(rdir / "batch.csv", dtype=str).subject_id)
    init_from = previous_model(ledger.rounds(), number, experiment) if cfg.bootstrap.warm_start else None
    train_cfg = round_steps.train_config(cfg, rdir, experiment, init_from)

    if "train" not in done:
        start = time.perf_counter()
        model = round_steps.train(train_cfg, train_ids)
        ledger.finish_step(number, "train", {"train_seconds": time.perf_counter() - start}, model=model)
    model = ledger.round(number)["model"]

    predicted_dir = store.predicted_dir(number)
    if "predict" not in done:
        images = Path(cfg.bootstrap.images_dir)
        uncertainty = round_steps.predict_batch(train_cfg, [nifti_path(images, s) for s in batch], predicted_dir,
                                                rdir / "uncertainty.csv")
        with ledger.transaction() as db:
            for subject_id in batch:
                subject = ledger.subject(subject_id)
                if subject.state == PREDICTED and subject.round == number:
                    continue  # moved before an interruption
                ledger.move(db, subject_id, PREDICTED, round=number, model=model,
                            prediction=str(store.predicted(number, subject_id)))
        ledger.finish_step(number, "predict", {"n_predicted": len(uncertainty)})

    if "heart" not in done:
        given = _give_heart(cfg, ledger, store, number, batch)
        # The round model's entropy over the heart classes no longer describes what the annotator corrects.
        round_steps.write_uncertainty(predicted_dir / ENTROPY_TABLE, batch, rdir / "uncertainty.csv",
                                      {s: heart_class_ids() for s in given})
        ledger.finish_step(number, "heart", {"n_heart_prior": len(given)})

    if "tables" not in done:
        write_label_tables(predicted_dir)
        ledger.finish_step(number, "tables")

    qa_dir = Path(cfg.paths.qa) / f"round_{number:02d}"
    if "qa" not in done:
        round_steps.render_qa(cfg, predicted_dir, qa_dir, batch)
        ledger.finish_step(number, "qa")

    worklist = worklist_path(annotation, number)
    if "worklist" not in done:
        flags = pd.read_csv(qa_dir / "flags.csv", dtype={"subject_id": str}, keep_default_na=False)
        uncertainty = pd.read_csv(rdir / "uncertainty.csv", dtype={"subject_id": str})
        table = uncertainty.merge(flags[["subject_id", "n_flags", "flags"]], on="subject_id", how="left")
        table = table.fillna({"n_flags": 0, "flags": ""})
        ranked = rank(table, float(cfg.bootstrap.worklist.flag_weight), float(cfg.bootstrap.worklist.entropy_weight))
        ranked["prediction"] = [str(store.predicted(number, s)) for s in ranked.subject_id]
        heart_from = {p["subject_id"]: p["model"] for p in ledger.heart_priors() if p["round"] == number}
        ranked["heart_model"] = [heart_from.get(s, "") for s in ranked.subject_id]  # who drew the heart sub-parts
        ranked["qa_sheet"] = [str(qa_dir / "subjects" / f"{s}.png") for s in ranked.subject_id]
        write_table(ranked, worklist)
        with ledger.transaction() as db:
            for subject_id in batch:
                if ledger.subject(subject_id).state == PREDICTED:
                    ledger.move(db, subject_id, IN_CORRECTION, round=number)
        ledger.finish_step(number, "worklist")
    write_round_report(ledger, Path(cfg.paths.reports), float(cfg.bootstrap.seconds_per_slice),
                       worklists_dir(Path(cfg.paths.annotation)))
    ledger.finish_round(number)
    return RoundResult(number, n, batch, worklist, done)


@hydra.main(config_path=CONFIG_PATH, config_name="round", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    try:
        result = run_round(cfg)
    except (RoundError, TrainedWithOtherSettings) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if result.already_finished:
        print(f"round {result.number} on N={result.n_reviewed} reviewed subjects has finished already; nothing to do "
              f"(worklist: {result.worklist})")
        return
    resumed = f" (resumed; steps already done: {', '.join(result.skipped_steps)})" if result.skipped_steps else ""
    print(f"round {result.number}: trained on {result.n_reviewed} reviewed subjects{resumed}")
    print(f"  predicted {len(result.predicted)} subjects; worklist (most work first): {result.worklist}")
    print(f"  QA sheets: {Path(cfg.paths.qa) / f'round_{result.number:02d}'}")
    print(f"  report: {Path(cfg.paths.reports) / 'bootstrap_rounds.md'}")


if __name__ == "__main__":
    main()

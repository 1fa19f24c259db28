"""The trained experiments of a workspace as the report reads them: ``<results>/<experiment>/`` with the model
manifest (``model.json``), the run summary and the test split's ``scores.parquet`` (the evaluation's table)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from totalseg_train.engine.manifest import MANIFEST, read_model_manifest
from totalseg_train.engine.pipeline import SUMMARY
from totalseg_train.evaluate.folders import SCORES_FILE


@dataclass(frozen=True)
class Experiment:
    """One experiment's folder. ``parts``: each part model's v1 class ids; ``scores``: the test split's
    scores.parquet (None until the test split is scored; the evaluation scores a model on the classes it
    predicts); ``state``: why there are no scores, where there are none; ``problems``: unreadable files beside."""

    name: str
    directory: Path
    parts: dict[str, tuple[int, ...]]
    summary: dict | None
    scores: pd.DataFrame | None
    state: str = ""
    problems: tuple[str, ...] = ()

    @property
    def class_ids(self) -> list[int]:
        return sorted({i for ids in self.parts.values() for i in ids})

    @property
    def scored(self) -> bool:
        return self.scores is not None and not self.scores.empty


def train_command(name: str, workspace: str) -> str:
    return f"python -m totalseg_train +experiment={name} paths.workspace={workspace}"


def load_experiment(directory: Path, workspace: str) -> Experiment:
    """The experiment in ``directory`` (a folder with model.json)."""
    model = read_model_manifest(directory)
    summary_path = directory / SUMMARY
    summary, problems = None, []
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError as err:
            problems.append(f"{summary_path}: not a readable run summary ({err})")
    scores, state = None, ""
    untrained = model.untrained_parts()
    if untrained:
        state = (f"part models {', '.join(untrained)} are not trained yet: `{train_command(model.experiment, workspace)}` "
                 "trains them, then predicts and scores the test split")
    elif not (directory / SCORES_FILE).is_file():
        state = (f"the test split is not scored yet: `{train_command(model.experiment, workspace)}` predicts and scores "
                 "it (finished training is kept)")
    else:
        try:
            scores = pd.read_parquet(directory / SCORES_FILE)
        except (OSError, ValueError) as err:
            state = (f"{directory / SCORES_FILE} is not a readable scores table ({err}); delete it and run "
                     f"`{train_command(model.experiment, workspace)}` to score the test split again")
        else:
            if scores.empty:
                state = f"{directory / SCORES_FILE} holds no scored subject (an empty test split?)"
    return Experiment(model.experiment, directory, {p.part: p.v1_class_ids for p in model.parts}, summary, scores,
                      state, tuple(problems))


def find_experiments(results: Path, wanted: list[str], workspace: str) -> tuple[list[Experiment], dict[str, str]]:
    """The experiments in ``results`` (``wanted`` first, then any other, by name) and, for each wanted one that
    was never trained, the command that trains it."""
    results = Path(results)
    found = sorted(p.parent.name for p in results.glob(f"*/{MANIFEST}")) if results.is_dir() else []
    order = [n for n in wanted if n in found] + [n for n in found if n not in wanted]
    missing = {n: f"`{train_command(n, workspace)}`" for n in wanted if n not in found}
    return [load_experiment(results / n, workspace) for n in order], missing

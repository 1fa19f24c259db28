"""Shared fixtures: the shared real data and one small phantom cohort per test session; how ``make test``'s
pytest-xdist workers share the machine and the tests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import cached_property
from pathlib import Path

from totalseg_train.job_shares import core_share


def pin_xdist_worker() -> None:
    """Give each pytest-xdist worker its own share of the cores (``job_shares``), before torch starts its
    threads. Everything a worker starts inherits the share, and nnU-Net's "all cores" becomes the share's cores
    (``usable_cores``)."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, core_share(os.sched_getaffinity(0), int(worker.removeprefix("gw")), int(count)))


pin_xdist_worker()

import pandas as pd  # noqa: E402  (after the pinning: these import libraries that size thread pools)
import pytest  # noqa: E402
from xdist.scheduler import LoadScopeScheduling  # noqa: E402

from totalseg_train.config import compose_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CT_EXAMPLE = SHARED / "data" / "ct_example"

# Session fixtures exist once per xdist worker, so the tests of one trained model run on one worker: every
# module that uses one of these joins its group (each model is still trained once per session).
SHARED_TRAININGS = ("tiny_run", "heart_model")
# The longest groups start first, on different workers, so that neither waits for the other at the end.
LONGEST_FIRST = ("test_bootstrap_loop.py", "heart_model", "tiny_run")


def shared_model_groups(items: list[pytest.Item]) -> dict[str, str]:
    """Each test's group by node id: its module, merged with every module that uses the same trained model."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for item in items:
        for name in SHARED_TRAININGS:
            if name in item.fixturenames:
                parent[root(item.path.name)] = root(name)
    return {item.nodeid: root(item.path.name) for item in items}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the groups longest first; in an xdist worker, write the groups where the scheduler reads them."""
    groups = shared_model_groups(items)
    rank = {group: len(LONGEST_FIRST) for group in groups.values()}
    for item in items:
        for i, key in enumerate(LONGEST_FIRST):
            if key == item.path.name or key in item.fixturenames:
                group = groups[item.nodeid]
                rank[group] = min(rank[group], i)
    items.sort(key=lambda item: rank[groups[item.nodeid]])
    target = getattr(config, "workerinput", {}).get("test_groups")
    if target:  # both workers collect the same tests: the same file, written whole
        partial = Path(f"{target}.{config.workerinput['workerid']}")
        partial.write_text(json.dumps(groups))
        partial.replace(target)


GROUPS_FILE = pytest.StashKey[Path]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """The controller tells each xdist worker where to write the test groups it collects."""
    if GROUPS_FILE not in node.config.stash:
        node.config.stash[GROUPS_FILE] = Path(tempfile.mkdtemp(prefix="pytest-groups-")) / "groups.json"
    node.workerinput["test_groups"] = str(node.config.stash[GROUPS_FILE])


class SharedModelScheduling(LoadScopeScheduling):
    """xdist's scope scheduling with our groups as the scopes, in collection order (longest first).
    pytest-xdist's own ``--dist loadgroup`` loses its groups under pytest 9 (pytest-xdist issue 1386)."""

    @cached_property
    def groups(self) -> dict[str, str]:  # read once every worker has collected (written by then)
        return json.loads(self.config.stash[GROUPS_FILE].read_text())

    def _split_scope(self, nodeid: str) -> str:
        return self.groups[nodeid]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log) -> SharedModelScheduling:
    config.option.loadscopereorder = False
    return SharedModelScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    if GROUPS_FILE in config.stash:
        shutil.rmtree(config.stash[GROUPS_FILE].parent, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"tests need the shared data beside the project: {SHARED}"
    return SHARED


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture()
def browser(tmp_path):
    """Headless Chromium driven by selenium (the review page's and the paper report's tests)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for error checks
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory) -> Path:
    """A small phantom cohort (8 patients: every fixed role once) in a fresh workspace; returns raw/."""
    from data_prep.phantom.cohort import generate_cohort

    workspace = tmp_path_factory.mktemp("phantom_ws")
    cfg = compose_config("phantom", [f"paths.workspace={workspace}", "n_subjects=8", "seed=0"])
    generate_cohort(cfg, progress=False)
    return Path(cfg.out)


@pytest.fixture(scope="session")
def phantom_index(phantom_cohort) -> pd.DataFrame:
    return pd.read_csv(phantom_cohort / "truth" / "index.csv", keep_default_na=False)


@pytest.fixture(scope="session")
def coarse_cohort(tmp_path_factory):
    """Factory ``make(workspace, n_subjects)``: a phantom cohort drawn at 6 mm in-plane and 5 mm slices (few voxels:
    quick to train on and to predict), curated by the real curation stage, its truth labels exported. Each size is
    generated once per session (per worker under ``make test``: the bootstrap loop and the heart model, which both
    start from the 30-patient cohort, run on different workers) and copied into every workspace that asks for it."""
    import subprocess
    import sys

    from data_prep.phantom.cohort import generate_cohort
    from data_prep.phantom.truth_labels import export_truth_labels

    made: dict[int, Path] = {}

    def generate(workspace: Path, n_subjects: int) -> None:
        cfg = compose_config("phantom", [f"paths.workspace={workspace}", f"n_subjects={n_subjects}", "seed=0",
                                         "pixel_spacing_mm=6.0", "slice_thickness_mm.values=[5.0]",
                                         "slice_thickness_mm.weights=[1.0]"])
        generate_cohort(cfg, progress=False)
        run = subprocess.run([sys.executable, "-m", "data_prep.curate", f"paths.workspace={workspace}", "progress=false"],
                             capture_output=True, text=True, cwd=REPO)
        assert run.returncode == 0, f"curation failed:\n{run.stderr[-4000:]}"
        export_truth_labels(workspace / "private" / "pseudonym_key.csv", workspace / "raw" / "truth",
                            workspace / "curated" / "images", workspace / "truth_labels")

    def make(workspace: Path, n_subjects: int) -> Path:
        if n_subjects not in made:
            made[n_subjects] = tmp_path_factory.mktemp(f"coarse_cohort_{n_subjects}")
            generate(made[n_subjects], n_subjects)
        shutil.copytree(made[n_subjects], workspace, dirs_exist_ok=True)
        return workspace

    return make


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, coarse_cohort) -> Path:
    """The 8-patient phantom cohort at 6 mm in-plane and 5 mm slices, curated, with the phantom's truth as
    labels. The training labels (``train_labels/``) hold four subjects of three patients: both exams of one
    two-exam patient and one exam of two others; the 597-slice whole-body scan is left out to keep
    predictions fast. The tiny models of ``tiny_run`` and ``tiny_parts_run`` are trained here."""

    ws = coarse_cohort(tmp_path_factory.mktemp("train_ws"), 8)
    subjects = pd.read_csv(ws / "curated" / "subjects.csv", dtype=str)
    subjects = subjects[subjects.n_slices.astype(int) < 300]
    exams = subjects.groupby("patient").subject_id.apply(sorted)
    pair = exams[exams.map(len) == 2].index[0]
    chosen = list(exams[pair]) + [ids[0] for patient, ids in exams.items() if patient != pair][:2]
    (ws / "train_labels").mkdir()
    for sid in chosen:
        shutil.copy(ws / "truth_labels" / f"{sid}.nii.gz", ws / "train_labels" / f"{sid}.nii.gz")
    return ws


def train_overrides(ws: Path, experiment: str = "tiny") -> list[str]:
    """A tiny experiment on ``workspace``'s training labels: one process, one thread (steady on a CPU shared
    with other jobs, no worker start-up to wait for), two short epochs: the tests check mechanics, not what
    the network learns."""
    return [f"+experiment={experiment}", f"paths.workspace={ws}", f"labels_dir={ws / 'train_labels'}", "workers=1",
            "data_workers=0", "torch_threads=1", "model.epochs=2", "model.iterations_per_epoch=10", "model.seed=0"]


@pytest.fixture(scope="session")
def tiny_run(workspace) -> Path:
    """``python -m totalseg_train +experiment=tiny`` with wandb offline, as a user runs it; its console output is
    kept in ``tiny_run.stdout`` and ``tiny_run.stderr`` beside the workspace (tests/test_console.py reads them)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "totalseg_train", *train_overrides(workspace), "logger=wandb"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "tiny: train 2, validation 1, test 1" in run.stdout
    workspace.with_name("tiny_run.stdout").write_text(run.stdout)
    workspace.with_name("tiny_run.stderr").write_text(run.stderr)
    return workspace


@pytest.fixture(scope="session")
def tiny_parts_run(tiny_run) -> Path:
    """``python -m totalseg_train -m +experiment=tiny_parts part=organs,cardiac hydra/launcher=local``: tiny as two
    part models (organs and cardiac) trained as two jobs of a local submitit sweep, as a cluster trains them, in
    ``tiny_run``'s workspace (the same split, so both models are scored on the same test subject). The cardiac
    job is killed (kill -9) once it has saved its first checkpoint, and the sweep is started again, as SLURM
    requeues a pre-empted job. ``tiny_parts_sweep.json`` beside the workspace records the kill and what the
    first sweep left (tests/test_scale_out.py checks them). As on a workstation with two GPUs (CUDA_VISIBLE_DEVICES
    3,5 here, where no GPU is used: tiny trains on the CPU), each job is given one GPU."""
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "totalseg_train", "-m", *train_overrides(tiny_run, "tiny_parts"),
               "model.final_validation=false", "model.epochs=4", "part=organs,cardiac", "hydra/launcher=local",
               "hydra.launcher.gpus_per_node=1"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5"}
    cardiac = tiny_run / "nnunet" / "results"
    lock = tiny_run / "results" / ".tiny_parts.train-cardiac.lock"
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                             env=env)
    checkpoint = None
    while first.poll() is None and checkpoint is None:
        found = list(cardiac.glob("Dataset395_*/*/fold_0/checkpoint_latest.pth"))
        checkpoint = found[0] if found else None
        time.sleep(0.05)
    assert checkpoint is not None, "the sweep ended before cardiac saved a checkpoint:\n" + first.stdout.read()[-5000:]
    holder = lock.read_text().split()  # "pid <n> since <time>": the job training the cardiac part
    os.kill(int(holder[1]), signal.SIGKILL)
    killed_at = time.time()
    output = first.communicate()[0]
    organs_final = next(cardiac.glob("Dataset394_*/*/fold_0/checkpoint_final.pth"))
    record = {"killed_at": killed_at, "first_returncode": first.returncode,
              "cardiac_final_after_first": any(checkpoint.parent.glob("checkpoint_final.pth")),
              "organs_final_mtime_ns": organs_final.stat().st_mtime_ns,
              "summary_after_first": json.loads((tiny_run / "results" / "tiny_parts" / "run_summary.json").read_text())}
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    record["first_output"] = output[-4000:]
    tiny_run.with_name("tiny_parts_sweep.json").write_text(json.dumps(record, indent=1, default=str))
    return tiny_run


@pytest.fixture(scope="session")
def curated_workspace(phantom_cohort) -> Path:
    """The phantom cohort curated by ``python -m data_prep.curate`` (a real run, Hydra logs included) and its
    truth labels exported; returns the workspace (raw/, curated/, private/, reports/, truth_labels/, logs/)."""
    import subprocess
    import sys

    from data_prep.phantom.truth_labels import export_truth_labels

    workspace = phantom_cohort.parent
    run = subprocess.run([sys.executable, "-m", "data_prep.curate", f"paths.workspace={workspace}", "progress=false"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, f"curation failed:\n{run.stderr[-4000:]}"
    export_truth_labels(workspace / "private" / "pseudonym_key.csv", phantom_cohort / "truth",
                        workspace / "curated" / "images", workspace / "truth_labels")
    return workspace


def heart_labels_by_transfer(workspace: Path) -> list[str]:
    """``${paths.heart}/labels`` from ``python -m data_prep.heart_transfer``, as a user builds it: the contrast
    subjects of the pairs with their heart drawn (the phantom's truth), the native ones by registration and label
    transfer (QC holds back pairs whose heart the native scan cuts). Returns the heart cohort's subjects."""
    import subprocess
    import sys

    subjects = pd.read_csv(workspace / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    contrast = subjects.subject_id[(subjects.paired_subject_id != "") & (subjects.contrast_phase != "native")]
    drawn = workspace / "contrast_heart_labels"
    drawn.mkdir()
    for subject_id in contrast:
        shutil.copy(workspace / "truth_labels" / f"{subject_id}.nii.gz", drawn / f"{subject_id}.nii.gz")
    run = subprocess.run([sys.executable, "-m", "data_prep.heart_transfer", f"paths.workspace={workspace}",
                          f"labels_dir={drawn}", "other_classes=drop", "progress=false"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return sorted(pd.read_csv(workspace / "heart" / "labels" / "index.csv", dtype=str).subject_id)


def write_heart_split(workspace: Path, cohort: list[str]) -> None:
    """``split_heart.json`` with a transferred pair as the test split, stored the way the engine stores and
    reuses a split (a user may bring their own): the seeded draw takes a one-subject patient (a contrast scan
    whose native partner QC held back) as often as a pair, and the test compares native and contrast."""
    from totalseg_train.engine.split import Split, SplitSettings, split_to_json

    settings = SplitSettings.from_config(compose_config("train", ["+experiment=heart_tiny"]).split)
    subjects = pd.read_csv(workspace / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    subjects = subjects[subjects.subject_id.isin(cohort)].set_index("subject_id")
    patient_of = subjects.patient.to_dict()
    pairs = sorted(p for p, n in subjects.patient.value_counts().items() if n == 2)
    others = sorted(set(subjects.patient) - {pairs[0]})
    members = {"test": [pairs[0]], "val": [others[0]], "train": others[1:]}
    ids = {g: tuple(sorted(s for s, p in patient_of.items() if p in patients)) for g, patients in members.items()}
    split = Split(ids["train"], ids["val"], ids["test"], settings)
    (workspace / "nnunet").mkdir(exist_ok=True)
    (workspace / "nnunet" / "split_heart.json").write_text(split_to_json(split, patient_of))


@pytest.fixture(scope="session")
def heart_model(tmp_path_factory, coarse_cohort) -> dict:
    """``heart_tiny`` trained once for every heart test, as a user runs it (``python -m totalseg_train
    +experiment=heart_tiny``), on 30 phantom patients at the demo's grid (7 contrast/native pairs) with heart
    labels from ``heart_labels_by_transfer``; no final validation (the test split is scored). Returns the
    workspace, the heart cohort, the command's output and the fixture's seconds."""
    import subprocess
    import sys
    import time

    started = time.perf_counter()
    workspace = coarse_cohort(tmp_path_factory.mktemp("heart_ws"), 30)
    cohort = heart_labels_by_transfer(workspace)
    write_heart_split(workspace, cohort)
    run = subprocess.run([sys.executable, "-m", "totalseg_train", "+experiment=heart_tiny", f"paths.workspace={workspace}",
                          "device=cpu", "workers=1", "data_workers=0", "torch_threads=1", "model.seed=0",
                          "model.final_validation=false"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return {"ws": workspace, "cohort": cohort, "stdout": run.stdout, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="session")
def apply_heart():
    """``apply_heart(workspace, *overrides)``: ``python -m data_prep.heart_transfer.apply`` with the heart_tiny model
    of ``workspace`` on the CPU; returns the finished process."""
    import subprocess
    import sys

    def run(workspace: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "data_prep.heart_transfer.apply", f"paths.workspace={workspace}",
                               f"model={workspace / 'results' / 'heart_tiny'}", "device=cpu", "workers=1",
                               "torch_threads=1", "progress=false", *extra], capture_output=True, text=True, cwd=REPO)

    return run


@pytest.fixture(scope="session")
def heart_applied(heart_model, apply_heart) -> dict:
    """The heart model applied to a table of four curated subjects: the test split's pair and two training
    subjects (apply takes any subjects table; the cohort's 33 subjects, a 597-slice whole-body scan among them,
    would take minutes on a CPU). Returns the table's path and subjects, the output folder and the output."""
    workspace = heart_model["ws"]
    split = json.loads((workspace / "nnunet" / "split_heart.json").read_text())
    chosen = sorted(sorted(split["test"]) + sorted(split["train"])[:2])
    subjects = pd.read_csv(workspace / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    table = workspace / "apply_subjects.csv"
    subjects[subjects.subject_id.isin(chosen)].to_csv(table, index=False)
    run = apply_heart(workspace, f"subjects_csv={table}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return {"ws": workspace, "table": table, "subjects": chosen, "out": workspace / "heart" / "predicted",
            "stdout": run.stdout}

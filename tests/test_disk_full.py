"""A full disk: on a small tmpfs workspace, an ingest that cannot write an annotator's final label stops with
one line naming the file, leaves every earlier file as it was and no temporary behind; once there is room again,
the same command stores the corrections exactly as on a disk that never filled."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from annotation_loop.ingest import ingest
from annotation_loop.ledger import IN_CORRECTION, REVIEWED, Ledger
from annotation_loop.start import start
from conftest import REPO
from totalseg_train.atomic import TMP_MARK
from totalseg_train.config import compose_config

SHAPE = (40, 160, 160)  # a label map of random ids: about 480 kB compressed, more than the room left


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 3.0))
    return image


def _digests(root: Path) -> dict[str, str]:
    """Every file under ``root`` (Hydra's run logs and lock files aside) -> SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "logs" not in p.parts and not p.name.endswith(".lock")}


def _ledger_state(ws: Path) -> pd.DataFrame:
    ledger = Ledger(ws / "annotation" / "ledger.sqlite")
    try:
        return pd.DataFrame([(s.subject_id, s.state, s.final_version) for s in ledger.subjects()],
                            columns=["subject_id", "state", "final_version"]).sort_values("subject_id")
    finally:
        ledger.close()


def test_a_full_disk_keeps_the_previous_state_and_names_the_file(tmp_path):
    ws, incoming = tmp_path / "ws", tmp_path / "incoming"
    (ws / "curated" / "images").mkdir(parents=True)
    ids = ["s0001", "s0002", "s0003"]
    for sid in ids:
        sitk.WriteImage(_image(np.zeros(SHAPE, np.int16)), str(ws / "curated" / "images" / f"{sid}.nii.gz"))
    pd.DataFrame({"subject_id": ids, "patient": ["p1", "p2", "p3"]}).to_csv(ws / "curated" / "subjects.csv",
                                                                          index=False)
    overrides = [f"paths.workspace={ws}", "bootstrap.schedule=[3,3]"]
    handed_out = start(compose_config("bootstrap_start", overrides))
    assert sorted(handed_out) == ids
    incoming.mkdir()
    rng = np.random.default_rng(0)
    for sid in ids:
        sitk.WriteImage(_image(rng.integers(0, 11, SHAPE, dtype=np.uint8)), str(incoming / f"{sid}.nii.gz"))
    # One correction stored while there was room: the state that must survive.
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(incoming / "s0001.nii.gz", first / "s0001.nii.gz")
    assert ingest(compose_config("ingest", overrides + [f"corrected_dir={first}"])).accepted == ["s0001"]
    reference = tmp_path / "reference"  # the same ingest on a disk that never fills
    shutil.copytree(ws, reference)
    assert ingest(compose_config("ingest", [f"paths.workspace={reference}", "bootstrap.schedule=[3,3]",
                                            f"corrected_dir={incoming}"])).accepted == ["s0002", "s0003"]

    mnt, full, freed = tmp_path / "mnt", tmp_path / "after_full", tmp_path / "after_freed"
    mnt.mkdir()
    command = f"{sys.executable} -m annotation_loop.ingest paths.workspace={mnt} corrected_dir={incoming}"
    script = f"""set -e
mount -t tmpfs -o size=8m tmpfs {mnt}
cp -a {ws}/. {mnt}/
dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null || true   # the disk is full ...
truncate -s -128K {mnt}/filler                                # ... but for 128 kB
set +e
{command} > {tmp_path}/full.out 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc
set -e
rm {mnt}/filler; cp -a {mnt}/. {full}/
{command} > {tmp_path}/freed.out 2> {tmp_path}/freed.err; echo $? > {tmp_path}/freed.rc
cp -a {mnt}/. {freed}/
"""
    # A mount namespace of its own (unprivileged through a user namespace): the tmpfs is gone when it ends.
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr

    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "2", err
    assert f"error: {mnt}/annotation/final/versions/s0002/v001.nii.gz: not written: written incompletely" in err
    assert "MB free on its disk); the previous version, if any, is kept" in err and "Traceback" not in err
    before = _digests(ws)
    after = _digests(full)
    assert after == before  # nothing changed, nothing added (no temporary, no empty version folder's file)
    assert not list(full.rglob(f"{TMP_MARK}*"))
    assert _ledger_state(full).equals(_ledger_state(ws))
    assert dict(zip(*_ledger_state(full)[["subject_id", "state"]].T.values)) == {
        "s0001": REVIEWED, "s0002": IN_CORRECTION, "s0003": IN_CORRECTION}

    assert (tmp_path / "freed.rc").read_text().strip() == "0", (tmp_path / "freed.err").read_text()
    for sid in ids:
        stored = freed / "annotation" / "final" / "labels" / f"{sid}.nii.gz"
        assert stored.read_bytes() == (reference / "annotation" / "final" / "labels" / f"{sid}.nii.gz").read_bytes()
    assert _ledger_state(freed).equals(_ledger_state(reference))
    assert not list(freed.rglob(f"{TMP_MARK}*"))

"""A shard's rendered frames: the 3D views of a sheet without its header, kept so that the merge can write a
sheet again with the flags the whole cohort gives it without meshing and rendering it again.

``<out>/shards/frames/<subject_id>.png`` (the frame), ``.json`` (its panels, note and the label file it shows),
``_ct.png`` (the coronal CT slice, where the sheet has one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from annotation_loop.qa.renderer import Panel, View
from totalseg_train.atomic import atomic_path, write_text
from totalseg_train.shards import PARTS_DIR


@dataclass
class Frame:
    image: np.ndarray             # RGB frame with every panel
    panels: list[Panel]
    note: str                     # the sheet's note beside the subject id
    ct_slice: np.ndarray | None   # RGB coronal CT slice, or None
    labels_sha256: str            # the label file the views show


def _paths(out: Path, subject_id: str) -> tuple[Path, Path, Path]:
    folder = Path(out) / PARTS_DIR / "frames"
    return folder / f"{subject_id}.png", folder / f"{subject_id}.json", folder / f"{subject_id}_ct.png"


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")


def save_frame(out: Path, subject_id: str, frame: Frame) -> None:
    image, record, ct = _paths(out, subject_id)
    _save_png(frame.image, image)
    if frame.ct_slice is not None:
        _save_png(frame.ct_slice, ct)
    panels = [{"group": p.group, "view": {"name": p.view.name, "look": list(p.view.look), "up": list(p.view.up)},
               "rect": list(p.rect)} for p in frame.panels]
    # The record last: a frame counts only once its record names the label file it was drawn from.
    write_text(record, json.dumps({"labels_sha256": frame.labels_sha256, "note": frame.note, "panels": panels,
                                   "ct_slice": frame.ct_slice is not None}))


def load_frame(out: Path, subject_id: str, labels_sha256: str) -> Frame | None:
    """The subject's stored frame if it shows the label file with this hash; None otherwise."""
    image, record, ct = _paths(out, subject_id)
    if not record.is_file():
        return None
    stored = json.loads(record.read_text())
    if stored["labels_sha256"] != labels_sha256 or not image.is_file() or (stored["ct_slice"] and not ct.is_file()):
        return None
    panels = [Panel(p["group"], View(p["view"]["name"], tuple(p["view"]["look"]), tuple(p["view"]["up"])),
                    tuple(p["rect"])) for p in stored["panels"]]
    ct_slice = np.asarray(Image.open(ct).convert("RGB")) if stored["ct_slice"] else None
    return Frame(np.asarray(Image.open(image).convert("RGB")), panels, stored["note"], ct_slice, labels_sha256)

"""Label tables that annotators' tools open beside a multi-label NIfTI: 3D Slicer and ITK-SNAP."""

from __future__ import annotations

from pathlib import Path

from totalseg_train import classes
from totalseg_train.atomic import write_text


def slicer_colour_table() -> str:
    """3D Slicer colour table (.ctbl): ``id name R G B A`` per class."""
    lines = ["# TotalSegmentator v1 classes (104), colours as in the QA renders", "0 background 0 0 0 0"]
    lines += [f"{c.id} {c.name} {' '.join(map(str, classes.class_colour(c.id)))} 255" for c in classes.all_classes()]
    return "\n".join(lines) + "\n"


def itksnap_label_description() -> str:
    """ITK-SNAP label description file: ``IDX R G B A VIS MSH "LABEL"`` per class."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# Columns = IDX -R- -G- -B- -A-- VIS MSH LABEL",
        "################################################",
        '    0     0    0    0        0  0  0    "Clear Label"',
    ]
    for c in classes.all_classes():
        r, g, b = classes.class_colour(c.id)
        lines.append(f'{c.id:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{c.name}"')
    return "\n".join(lines) + "\n"


def write_label_tables(folder: Path) -> list[Path]:
    paths = [folder / "labels_slicer.ctbl", folder / "labels_itksnap.txt"]
    write_text(paths[0], slicer_colour_table())
    write_text(paths[1], itksnap_label_description())
    return paths

"""Cohort grids: many subjects' sheets on one PNG, so that a reviewer scans a cohort in minutes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from annotation_loop.qa.sheet_layout import BACKGROUND, FLAG, OK, font
from totalseg_train.atomic import atomic_path, write_table

GRID_INDEX = "index.csv"


@dataclass(frozen=True)
class GridLayout:
    rows: int = 4
    cols: int = 4
    cell_width: int = 560
    cell_height: int = 360
    order: str = "flags"  # flags | subject


def grid_order(flags: pd.DataFrame, order: str) -> list[str]:
    """Subject ids in grid order: most QA flags first (then by id), or by id."""
    if order == "flags":
        return flags.sort_values(["n_flags", "subject_id"], ascending=[False, True]).subject_id.tolist()
    if order == "subject":
        return sorted(flags.subject_id)
    raise ValueError(f"grid.order must be flags or subject, not {order!r}")


def grid_image(cells: list[tuple[str, int, Image.Image]], layout: GridLayout) -> Image.Image:
    """One grid page: each cell is a sheet fitted into the cell with the subject id and flag count on top."""
    caption = 22
    page = Image.new("RGB", (layout.cols * layout.cell_width, layout.rows * (layout.cell_height + caption)), BACKGROUND)
    draw = ImageDraw.Draw(page)
    for i, (subject, n_flags, sheet) in enumerate(cells):
        row, col = divmod(i, layout.cols)
        x, y = col * layout.cell_width, row * (layout.cell_height + caption)
        thumb = sheet.copy()
        thumb.thumbnail((layout.cell_width - 6, layout.cell_height - 4), Image.LANCZOS)
        page.paste(thumb, (x + (layout.cell_width - thumb.width) // 2, y + caption))
        label = f"{subject}  " + (f"{n_flags} QA flag{'s' if n_flags != 1 else ''}" if n_flags else "no flags")
        draw.text((x + 6, y + 3), label, font=font(15, bold=True), fill=FLAG if n_flags else OK)
        draw.rectangle([x, y, x + layout.cell_width - 1, y + layout.cell_height + caption - 1], outline=(55, 55, 60))
    return page


def write_grids(sheets_dir: Path, flags: pd.DataFrame, out_dir: Path, layout: GridLayout) -> list[Path]:
    """grid_001.png, grid_002.png, ... of the subjects in ``flags`` that have a sheet, and index.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per_page = layout.rows * layout.cols
    n_flags = dict(zip(flags.subject_id, flags.n_flags))
    ordered = [s for s in grid_order(flags, layout.order) if (sheets_dir / f"{s}.png").exists()]
    paths, index = [], []
    for page_no, start in enumerate(range(0, len(ordered), per_page), start=1):
        chunk = ordered[start : start + per_page]
        cells = []
        for subject in chunk:
            with Image.open(sheets_dir / f"{subject}.png") as sheet:
                cells.append((subject, int(n_flags[subject]), sheet.convert("RGB")))
        path = out_dir / f"grid_{page_no:03d}.png"
        with atomic_path(path) as tmp:
            grid_image(cells, layout).save(tmp, format="PNG")
        paths.append(path)
        index += [(s, path.name, i // layout.cols + 1, i % layout.cols + 1) for i, s in enumerate(chunk)]
    for stale in sorted(out_dir.glob("grid_*.png")):
        if stale not in paths:
            stale.unlink()
    write_table(pd.DataFrame(index, columns=["subject_id", "grid", "row", "col"]), out_dir / GRID_INDEX)
    return paths

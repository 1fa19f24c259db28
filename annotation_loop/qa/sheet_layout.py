"""Turning a rendered frame into a QA sheet a reviewer can read: titles, orientation, flags, CT slice."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from annotation_loop.qa.renderer import Panel

TEXT = (235, 235, 235)
MUTED = (150, 150, 155)
FLAG = (255, 150, 60)
OK = (120, 210, 120)
BACKGROUND = (18, 18, 20)


@lru_cache(maxsize=8)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


@dataclass(frozen=True)
class SheetText:
    subject_id: str
    flags: str  # "" when the subject has no QA flag
    note: str  # one line under the id, e.g. "63 classes, labels only"


def coronal_ct_slice(
    ct: sitk.Image,
    labels: sitk.Image,
    colours: dict[int, tuple[int, int, int]],
    window: tuple[float, float] = (-160.0, 240.0),
    overlay_alpha: float = 0.35,
    margin_mm: float = 10.0,
) -> np.ndarray:
    """Coronal CT slice through the labels' centre, as a radiologist reads it: patient's right on the
    left of the image, head at the top, soft-tissue window, label colours laid over, square pixels."""
    ct_lps = sitk.GetArrayFromImage(sitk.DICOMOrient(ct, "LPS")).astype(np.float32)
    lab_img = sitk.DICOMOrient(labels, "LPS")
    lab = sitk.GetArrayFromImage(lab_img)
    if ct_lps.shape != lab.shape:
        raise ValueError("CT and labels must share a grid for the CT slice")
    sx, _, sz = lab_img.GetSpacing()
    zz, yy, xx = np.nonzero(lab)
    if len(zz) == 0:
        zz, yy, xx = (np.array([0, n - 1]) for n in lab.shape)
    j = int(np.median(yy))
    mz, mx = int(margin_mm / sz), int(margin_mm / sx)
    z0, z1 = max(0, zz.min() - mz), min(lab.shape[0], zz.max() + mz + 1)
    x0, x1 = max(0, xx.min() - mx), min(lab.shape[2], xx.max() + mx + 1)
    grey = np.clip((ct_lps[z0:z1, j, x0:x1] - window[0]) / (window[1] - window[0]), 0, 1)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    lab_slice = lab[z0:z1, j, x0:x1]
    lut = np.zeros((256, 3), np.float32)
    for class_id, colour in colours.items():
        lut[class_id] = colour
    labelled = lab_slice > 0
    rgb[labelled] = (1 - overlay_alpha) * rgb[labelled] + overlay_alpha * lut[lab_slice[labelled]]
    rgb = rgb[::-1]  # array z grows to the head: put the head at the top
    image = Image.fromarray(rgb.astype(np.uint8))
    return np.asarray(image.resize((max(1, round(image.width * sx)), max(1, round(image.height * sz)))))


def _fit_height(array: np.ndarray, height: int) -> Image.Image:
    image = Image.fromarray(array)
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.LANCZOS)


def compose_sheet(
    frame: np.ndarray,
    panels: list[Panel],
    group_names: list[str],
    text: SheetText,
    ct_slice: np.ndarray | None = None,
    title_size: int = 22,
    label_size: int = 14,
) -> Image.Image:
    """The subject's sheet: header with id and QA flags, then the panels, each class group titled
    with its view names and the orientation letters at the panel edges."""
    panel_h = panels[0].rect[3]
    row_tops = sorted({p.rect[1] for p in panels})
    ct_image = _fit_height(ct_slice, panel_h) if ct_slice is not None else None
    ct_w = ct_image.width + 8 if ct_image is not None else 0
    width = max(ct_w + frame.shape[1], 640)
    chars = max(40, int(width / (0.62 * label_size)))
    flag_lines = textwrap.wrap(f"QA flags: {text.flags}", width=chars) if text.flags else ["no QA flags"]
    if len(flag_lines) > 3:
        flag_lines = flag_lines[:2] + [flag_lines[2][: chars - 1] + "…"]
    header_h = 14 + title_size + (label_size + 5) * len(flag_lines) + 8
    titles_h = 2 * label_size + 14
    height = header_h + len(row_tops) * (titles_h + panel_h)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    bold_title = font(title_size, bold=True)
    draw.text((12, 10), text.subject_id, font=bold_title, fill=TEXT)
    draw.text((26 + draw.textlength(text.subject_id, font=bold_title), 10 + title_size - label_size - 1),
              text.note, font=font(label_size), fill=MUTED)
    y = 14 + title_size
    for line in flag_lines:
        draw.text((12, y), line, font=font(label_size, bold=bool(text.flags)), fill=FLAG if text.flags else OK)
        y += label_size + 5

    def sheet_y(frame_y: int) -> int:
        return header_h + row_tops.index(frame_y) * (titles_h + panel_h) + titles_h

    if ct_image is not None:
        sheet.paste(ct_image, (0, sheet_y(row_tops[0])))
        draw.text((4, sheet_y(row_tops[0]) - label_size - 6), "CT coronal", font=font(label_size - 2), fill=MUTED)
    for p in panels:
        x, fy, w, h = p.rect
        sx, sy = ct_w + x, sheet_y(fy)
        sheet.paste(Image.fromarray(frame[fy : fy + h, x : x + w]), (sx, sy))
        draw.text((sx + w / 2, sy - label_size - 4), p.view.name, font=font(label_size - 2), fill=MUTED, anchor="ma")
        left, right = p.view.edge_letters()
        letter = font(label_size + 2, bold=True)
        draw.text((sx + 5, sy + h / 2), left, font=letter, fill=MUTED, anchor="lm")
        draw.text((sx + w - 5, sy + h / 2), right, font=letter, fill=MUTED, anchor="rm")
    for group in sorted({p.group for p in panels}):
        mine = [p for p in panels if p.group == group]
        x0, x1 = ct_w + mine[0].rect[0], ct_w + mine[-1].rect[0] + mine[-1].rect[2]
        top = sheet_y(mine[0].rect[1]) - titles_h
        draw.text(((x0 + x1) / 2, top + 4), group_names[group], font=font(label_size, bold=True), fill=TEXT, anchor="ma")
        if mine[0].rect[0] > 0:
            draw.line([(x0, top + 4), (x0, top + titles_h + panel_h - 4)], fill=(60, 60, 65), width=1)
    return sheet

"""The report as data (sections holding text, tables and figures) and its two renderings: Markdown and one
self-contained HTML page (figures embedded as base64 PNG). Every table is also written as CSV, every figure
as PNG, beside the page."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from totalseg_train.atomic import atomic_path, remove_stale_temporaries, write_table, write_text  # noqa: E402

TABLES, FIGURES = "tables", "figures"
MISSING = "–"


@dataclass(frozen=True)
class Table:
    """A table: ``frame`` is written as ``tables/<name>.csv``; the page shows ``display`` (formatted) or the frame.

    ``link_columns`` hold paths relative to the report folder, shown as links (empty: no link)."""

    name: str
    title: str
    frame: pd.DataFrame
    display: pd.DataFrame | None = None
    note: str = ""
    link_columns: tuple[str, ...] = ()

    def shown(self) -> pd.DataFrame:
        return self.frame if self.display is None else self.display


@dataclass(frozen=True)
class Figure:
    """A PNG figure, written as ``figures/<name>.png`` and embedded in the page."""

    name: str
    title: str
    png: bytes
    note: str = ""


@dataclass
class Section:
    number: int
    title: str
    paper: str = ""                      # the paper's numbering, e.g. "Table 1, Figures 2-3"
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def heading(self) -> str:
        return f"{self.number}. {self.title}" + (f" [{self.paper}]" if self.paper else "")


def png_of(fig: plt.Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes; closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def format_value(value, whole: bool = False, scientific: bool = False) -> str:
    """A number as the tables show it: up to 1 to 3 decimals, larger numbers to 3 significant digits (whole
    numbers from 10 up plain; ``whole``: an integer column); ``scientific``: values below 0.001 in e-notation."""
    if _missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not isinstance(value, (float, np.floating)):
        return str(value)
    value = float(value)
    if whole or (value.is_integer() and abs(value) >= 10):
        return str(int(round(value)))
    if scientific and value != 0 and abs(value) < 0.001:
        return f"{value:.2e}"
    if abs(value) <= 1:
        return f"{value:.3f}"
    return f"{value:.{max(0, 2 - int(math.floor(math.log10(abs(value)))))}f}"


def _scientific(column: str) -> bool:
    """p-value columns (p, p_value, p_corrected, paper_p_value_below): tiny values in e-notation."""
    return column == "p" or column.startswith("p_") or "p_value" in column


def _cells(table: Table) -> list[list[str]]:
    """The shown frame's values as text, row by row."""
    shown = table.shown()
    whole = {c for c in shown.columns if pd.api.types.is_integer_dtype(shown[c])}
    return [[format_value(v, whole=c in whole, scientific=_scientific(str(c))) for c, v in zip(shown.columns, row)]
            for row in shown.itertuples(index=False)]


def interval(mean: float, low: float, high: float) -> str:
    """'0.943 [0.938, 0.947]'; the mean alone where there is no interval, '–' without a mean."""
    if _missing(mean):
        return MISSING
    if _missing(low) or _missing(high):
        return format_value(float(mean))
    return f"{format_value(float(mean))} [{format_value(float(low))}, {format_value(float(high))}]"


# ---------------------------------------------------------------------------------------------- Markdown

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_markdown(table: Table) -> list[str]:
    shown = table.shown()
    lines = [f"**{table.title}** ([{TABLES}/{table.name}.csv]({TABLES}/{table.name}.csv))", ""]
    if table.note:
        lines += [table.note, ""]
    if shown.empty:
        return lines + ["(no rows)", ""]
    lines.append("| " + " | ".join(_md_cell(str(c)) for c in shown.columns) + " |")
    lines.append("| " + " | ".join("---" for _ in shown.columns) + " |")
    for row, texts in zip(shown.itertuples(index=False), _cells(table)):
        cells = []
        for column, value, text in zip(shown.columns, row, texts):
            if column in table.link_columns:
                text = f"[{Path(str(value)).name}]({value})" if isinstance(value, str) and value else MISSING
            cells.append(_md_cell(text))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def to_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    lines = [f"# {title}", "", *[p + "\n" for p in intro]]
    lines += ["## Contents", ""] + [f"- {s.heading()}" for s in sections] + [""]
    for section in sections:
        lines += [f"## {section.heading()}", ""]
        for paragraph in section.text:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += _table_markdown(table)
        for figure in section.figures:
            lines += [f"![{figure.title}]({FIGURES}/{figure.name}.png)", "", f"*{figure.title}.* {figure.note}".rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: .9em; } code { background: #f4f4f4; padding: 0 .2em; }
.caption { font-weight: 600; margin-bottom: .2em; }
"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans and [label](target) links."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', escaped)


def _table_html(table: Table) -> str:
    shown = table.shown()
    parts = [f'<div class="caption">{html.escape(table.title)} '
             f'(<a href="{TABLES}/{table.name}.csv">{table.name}.csv</a>)</div>']
    if table.note:
        parts.append(f'<p class="note">{_inline(table.note)}</p>')
    if shown.empty:
        return "\n".join(parts + ["<p>(no rows)</p>"])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for row, texts in zip(shown.itertuples(index=False), _cells(table)):
        cells = []
        for column, value, text in zip(shown.columns, row, texts):
            if column in table.link_columns:
                cell = (f'<a href="{html.escape(value)}">{html.escape(Path(value).name)}</a>'
                        if isinstance(value, str) and value else MISSING)
            else:
                cell = html.escape(text)
            cells.append(f"<td>{cell}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "\n".join(parts)


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    caption = f"<b>{html.escape(figure.title)}.</b> {_inline(figure.note)}"
    return (f'<figure id="figure-{figure.name}"><img alt="{html.escape(figure.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>')


def to_html(title: str, intro: list[str], sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", *[f"<p>{_inline(p)}</p>" for p in intro], "<ol>"]
    body += [f'<li><a href="#section-{s.number}">{html.escape(s.heading().split(". ", 1)[1])}</a></li>'
             for s in sections]
    body.append("</ol>")
    for section in sections:
        body.append(f'<section id="section-{section.number}"><h2>{html.escape(section.heading())}</h2>')
        body += [f"<p>{_inline(p)}</p>" for p in section.text]
        body += [_table_html(t) for t in section.tables]
        body += [_figure_html(f) for f in section.figures]
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------- files

def write_report(out: Path, title: str, intro: list[str], sections: list[Section]) -> Path:
    """Write index.md, index.html, tables/*.csv and figures/*.png under ``out``; files of tables and figures
    this report no longer has are removed. Returns the path of index.html."""
    out = Path(out)
    remove_stale_temporaries(out)
    tables = [t for s in sections for t in s.tables]
    figures = [f for s in sections for f in s.figures]
    for kind, names in ((TABLES, [t.name for t in tables]), (FIGURES, [f.name for f in figures])):
        if len(set(names)) != len(names):
            raise ValueError(f"two {kind} share a name: {sorted(n for n in names if names.count(n) > 1)}")
    for table in tables:
        write_table(table.frame, out / TABLES / f"{table.name}.csv")
    for figure in figures:
        with atomic_path(out / FIGURES / f"{figure.name}.png") as tmp:
            tmp.write_bytes(figure.png)
    keep = {out / TABLES / f"{t.name}.csv" for t in tables} | {out / FIGURES / f"{f.name}.png" for f in figures}
    for folder, suffix in ((TABLES, ".csv"), (FIGURES, ".png")):
        for path in (out / folder).glob(f"*{suffix}"):
            if path not in keep:
                path.unlink()
    write_text(out / "index.md", to_markdown(title, intro, sections))
    write_text(out / "index.html", to_html(title, intro, sections))
    return out / "index.html"

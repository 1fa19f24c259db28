"""Section 8, the aging study [Figures 9-10]: the age correlations and figures that ``python -m
totalseg_train.aging`` left in reports/aging/, with the paper's correlations beside ours."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from totalseg_train.aging.paper import beside_paper
from totalseg_train.report.document import Figure, Section, Table

CORRELATIONS = "correlations.csv"


def aging_section(aging_dir: Path, shown: int, workspace: str) -> Section:
    section = Section(8, "Aging study", "Figures 9-10")
    correlations_csv = Path(aging_dir) / CORRELATIONS
    if not correlations_csv.is_file():
        section.text.append(f"Not available: no age correlations ({correlations_csv}). Run "
                            f"`python -m totalseg_train.aging paths.workspace={workspace}` (after the cohort statistics "
                            f"stage, `python -m totalseg_train.statistics paths.workspace={workspace}`).")
        return section
    correlations = pd.read_csv(correlations_csv)
    significant = correlations[correlations["significant"].astype(bool)]
    section.text.append(
        f"Spearman correlation of each class's volume and mean HU with age; {len(significant)} of "
        f"{len(correlations)} significant after correction. The paper (4004 whole-body CTs): aorta volume "
        "rs = 0.64, autochthonous back muscles' mean HU rs = -0.74, significance at P < .0001 (Bonferroni).")
    section.tables.append(Table("aging_paper", "The paper's age correlations beside ours", beside_paper(correlations)))
    tested = correlations.dropna(subset=["rs"])
    strongest = tested.reindex(tested["rs"].abs().sort_values(ascending=False).index).head(shown)
    section.tables.append(Table("aging_correlations", "Age correlations", correlations, display=strongest,
                                note=f"The {shown} strongest correlations; the CSV holds every class and measure "
                                     "(untested ones: too few subjects)."))
    for png in sorted(Path(aging_dir).glob("*.png")):
        section.figures.append(Figure(f"aging_{png.stem}", png.stem.replace("_", " "), png.read_bytes(),
                                      note=f"From {png}."))
    return section

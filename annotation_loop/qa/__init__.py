"""QA of label maps: 3D sheets rendered with fury offscreen, cohort grids and automatic QA flags."""

from annotation_loop.qa.flag_cohort import compute_flags
from annotation_loop.qa.render_cohort import RenderSummary, render_subjects

__all__ = ["compute_flags", "render_subjects", "RenderSummary"]

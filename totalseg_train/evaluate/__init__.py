"""Evaluation: per-class Dice and normalized surface distance, micro-averaged, as in the paper.

``evaluate_folders`` scores a folder of predictions against a folder of ground truth; ``score_pair``
scores two label arrays. NSD is identical to DeepMind's surface-distance package (see ``surface``).
"""

from totalseg_train.evaluate.aggregate import BootstrapSettings, group_means, summarise
from totalseg_train.evaluate.folders import evaluate_folders, list_subjects
from totalseg_train.evaluate.label_files import score_files
from totalseg_train.evaluate.scores import score_pair
from totalseg_train.evaluate.surface import surface_dice

__all__ = [
    "BootstrapSettings",
    "evaluate_folders",
    "group_means",
    "list_subjects",
    "score_files",
    "score_pair",
    "summarise",
    "surface_dice",
]

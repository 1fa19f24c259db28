"""Seen by nnU-Net's trainer search; the classes themselves live in an importable module of the package."""

from totalseg_train.engine.trainers import (
    nnUNetTrainerTotalSeg,
    nnUNetTrainerTotalSegNoDA,
    nnUNetTrainerTotalSegNoMirroring,
)

__all__ = ["nnUNetTrainerTotalSeg", "nnUNetTrainerTotalSegNoDA", "nnUNetTrainerTotalSegNoMirroring"]

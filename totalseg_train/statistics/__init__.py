"""Cohort statistics: volume and attenuation of every structure of every subject (README "Cohort statistics")."""

from totalseg_train.statistics.measures import reference_statistics, structure_statistics

__all__ = ["reference_statistics", "structure_statistics"]

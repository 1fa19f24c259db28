"""Curation: from a DICOM folder and a consent registry to a curated, pseudonymised NIfTI cohort."""

from data_prep.curate.pipeline import CurationSummary, curate

__all__ = ["CurationSummary", "curate"]

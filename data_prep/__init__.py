"""Dataset preparation: the phantom cohort and the curation of hospital DICOM."""

"""The phantom: a procedurally generated CT cohort with exact ground truth for all 104 classes."""

"""Base layer: the class table, the nnU-Net engine, evaluation and reports."""

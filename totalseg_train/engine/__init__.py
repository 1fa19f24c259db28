"""The training engine on nnU-Net v2: export, patient-level split, plans, training, prediction.

Public API: ``train_model(cfg, subject_ids)``, ``predict(model, images, out_dir)`` and ``run(cfg)``.
"""

from totalseg_train.engine.inference import predict
from totalseg_train.engine.pipeline import run, train_model

__all__ = ["predict", "run", "train_model"]

"""The training engine on nnU-Net v2: export, patient-level split, plans, training, prediction.

Public API: ``train_model(cfg, subject_ids)``, ``predict(model, images, out_dir)`` and ``run(cfg)``.
"""

__all__ = ["predict", "run", "train_model"]


def __getattr__(name: str):
    # Imported on first use: the engine's light modules (the model manifest, the split) are read by stages that
    # never train or predict, and must not pay for importing torch and nnU-Net.
    if name == "predict":
        from totalseg_train.engine.inference import predict

        return predict
    if name in ("run", "train_model"):
        from totalseg_train.engine import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

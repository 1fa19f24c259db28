"""nnU-Net's predictor with its sliding windows sent through the network several at a time.

nnU-Net predicts one window after the other (a batch of one). On a CPU, PyTorch runs a 3D convolution of a
batch of one small window through its own slow kernel instead of oneDNN's (``use_mkldnn`` in ATen's
Convolution.cpp: batch 1 and N x C x D x H <= 20480, e.g. a 32^3 window of 16 channels): tiny's network
then takes 150 ms per window alone and 50 ms per window two at a time. On a GPU, batches of windows keep it
busier. The windows, their Gaussian weights and the sum of their logits are nnU-Net's; only the grouping
differs.
"""

from __future__ import annotations

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian


class BatchedWindowsPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that runs ``windows_per_batch`` sliding windows through the network together."""

    def __init__(self, *args, windows_per_batch: int, **kwargs):
        super().__init__(*args, **kwargs)
        if windows_per_batch < 1:
            raise ValueError(f"windows_per_batch must be at least 1, not {windows_per_batch}")
        self.windows_per_batch = int(windows_per_batch)

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data: torch.Tensor, slicers, do_on_device: bool = True):
        results_device = self.device if do_on_device else torch.device("cpu")
        data = data.to(results_device)
        logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half,
                             device=results_device)
        weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
        gaussian = (compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                     value_scaling_factor=10, device=results_device) if self.use_gaussian else 1)
        for start in range(0, len(slicers), self.windows_per_batch):
            group = slicers[start:start + self.windows_per_batch]
            windows = torch.stack([data[s] for s in group]).to(self.device)
            predictions = self._internal_maybe_mirror_and_predict(windows).to(results_device)
            for prediction, s in zip(predictions, group):
                logits[s] += prediction * gaussian
                weights[s[1:]] += gaussian
        torch.div(logits, weights, out=logits)
        if torch.any(torch.isinf(logits)):
            raise RuntimeError("infinite logits in the sliding-window sum (nnU-Net keeps it in half precision)")
        return logits

"""A fold's model inputs: per-channel normalisation with training statistics, class weights, batched
prediction and scores. Public: ``mer.esaat`` and ``mer.train.predict`` use these too.

    mean, std = channel_stats(x_fit)                # x (N, C, S, S) -> (C,), (C,) float64
    prob = predict_proba(model, normalise(x_test, mean, std))   # (N, NUM_CLASSES)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mer.labels import NUM_CLASSES


@dataclass
class IndexLog:
    """Which sample indices were read, by purpose ('fit', 'norm', 'val', 'augment', 'select', 'predict')."""

    used: dict = field(default_factory=dict)

    def take(self, purpose: str, arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        self.used.setdefault(purpose, set()).update(int(i) for i in idx)
        return arr[idx]

    def as_dict(self) -> dict:
        return {k: sorted(v) for k, v in sorted(self.used.items())}


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of x (N, C, H, W) in float64; a constant channel gets std 1."""
    x64 = x.astype(np.float64)
    mean, std = x64.mean(axis=(0, 2, 3)), x64.std(axis=(0, 2, 3))
    return mean, np.where(std > 1e-12, std, 1.0)


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean_c) / std_c as float32; x (N, C, H, W), mean/std (C,)."""
    return ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)


def class_weight_vector(y: np.ndarray, mode: str) -> torch.Tensor | None:
    """Cross-entropy class weights: 'balanced' = n / (K n_c) on y (a missing class gets 1), 'none' = None."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    w = np.where(counts > 0, len(y) / (NUM_CLASSES * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict_proba(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, NUM_CLASSES) softmax probabilities of normalised inputs x (N, 3, S, S); the model is put in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        F.softmax(model(torch.from_numpy(x[i : i + batch]).to(device)), dim=1).cpu() for i in range(0, len(x), batch)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, NUM_CLASSES), np.float32)


def scores(y: np.ndarray, prob: np.ndarray) -> dict:
    """loss (mean NLL), acc, uf1, uar of probabilities prob (N, K) against labels y (N,)."""
    from mer.metrics import uf1_uar

    pred = prob.argmax(1)
    uf1, uar = uf1_uar(y, pred)
    loss = float(-np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, None)).mean())
    return {"loss": loss, "acc": float((pred == y).mean()), "uf1": uf1, "uar": uar}

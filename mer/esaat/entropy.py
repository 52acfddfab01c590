"""Gaussian entropy of a feature set (ESAAT's estimator).

For features X (n samples, D dims) modelled as a Gaussian with diagonal covariance diag(σ₁², ..., σ_D²),

    H(X) = Σ_d log σ_d  +  D/2 · log(2πe)            (nats)

ESAAT ("MLP can be a good transformer learner", CVPR 2024) uses the first term, Σ_d log σ_d, with σ_d the
standard deviation of dimension d across the calibration samples: the constant D/2·log(2πe) cancels in
every difference of entropies of the same features (transfer entropy), so it is left out unless
``constant=True``. ``full=True`` uses the full covariance instead, ½·log det Σ (+ the same constant): the
exact Gaussian entropy when dimensions are correlated (needs n > D samples).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def gaussian_entropy(x: Tensor, *, constant: bool = False, full: bool = False, eps: float = 1e-12) -> float:
    """Entropy estimate of features ``x`` (n, D) (or (n, ...), flattened to (n, D)), in nats.

    Σ_d log std_d (unbiased std over the n samples, floored at ``eps``); ``full``: ½·log det of the
    covariance; ``constant``: + D/2·log(2πe). Computed in float64."""
    if x.dim() < 2:
        raise ValueError(f"features must be (samples, dims), got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).double()
    n, D = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples to estimate a standard deviation, got {n}")
    if full:
        if n <= D:
            raise ValueError(f"full covariance of {D} dims needs more than {D} samples, got {n}; use full=False")
        cov = torch.cov(x.T)
        sign, logdet = torch.linalg.slogdet(cov)
        if sign <= 0:
            raise ValueError("the feature covariance is singular; use full=False (diagonal) instead")
        h = 0.5 * float(logdet)
    else:
        h = float(x.std(dim=0, unbiased=True).clamp_min(eps).log().sum())
    return h + (0.5 * D * math.log(2 * math.pi * math.e) if constant else 0.0)

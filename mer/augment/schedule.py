"""Noise schedules for the DDPM, as pure functions computed in float64.

The cosine schedule of Nichol & Dhariwal (2021, "Improved DDPM", eq. 17):

    ᾱ(t) = f(t) / f(0),   f(t) = cos²( (t/T + s) / (1 + s) · π/2 ),   s = 0.008
    β_t  = min(1 − ᾱ_t / ᾱ_{t−1}, max_beta)                       (t = 1..T, max_beta = 0.999)

Indices follow the code convention: arrays have length T and entry ``i`` (0-based) is diffusion
step ``t = i + 1``; ``alphas_cumprod[i] = ∏_{j ≤ i} (1 − β_j)``.  Everything here returns float64
tensors; :class:`mer.augment.diffusion.GaussianDiffusion` stores them as float32 buffers.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cosine_alpha_bar", "cosine_betas", "schedule_terms", "q_sample"]


def cosine_alpha_bar(t: torch.Tensor, timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Closed-form ᾱ(t) = cos²(((t/T + s)/(1 + s))·π/2) / cos²((s/(1 + s))·π/2), float64.

    Args:
        t: any shape, continuous time in [0, T] (float or int).
        timesteps: T.
        s: small offset that keeps β near t = 0 from being too small.
    Returns:
        same shape as ``t``, float64, equal to 1 at t = 0 and ≈ 0 at t = T.
    """
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    t = torch.as_tensor(t, dtype=torch.float64)
    f = torch.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return f / f0


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """β_1..β_T of the cosine schedule, shape (T,), float64, clipped at ``max_beta``."""
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    ab = cosine_alpha_bar(steps, timesteps, s)
    betas = 1.0 - ab[1:] / ab[:-1]
    return betas.clamp(min=0.0, max=max_beta)


def schedule_terms(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every derived quantity the forward process and the samplers need, float64, each shape (T,).

    Keys: ``betas``, ``alphas`` (1 − β), ``alphas_cumprod`` (ᾱ_t), ``alphas_cumprod_prev`` (ᾱ_{t−1},
    with ᾱ_0 = 1), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``posterior_variance`` (β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)),
    ``posterior_log_variance_clipped`` (log β̃ with the t = 1 entry replaced by t = 2's, since β̃_1 = 0),
    ``posterior_mean_coef1`` / ``posterior_mean_coef2`` (μ̃ = c1·x₀ + c2·x_t).
    """
    betas = betas.to(torch.float64)
    if betas.ndim != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) | (torch.arange(len(betas)) == 0)).all()) or not bool((betas < 1).all()):
        raise ValueError("betas must lie in (0, 1) (β_1 may be 0)")
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(betas) > 1 else torch.log(betas)
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": log_var,
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    }


def _extract(a: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``a[t]`` (a: (T,), t: (B,) long) and reshape to (B, 1, ..., 1) with ``ndim`` dims."""
    out = a.gather(0, t)
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    sqrt_alphas_cumprod: torch.Tensor,
    sqrt_one_minus_alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I):  x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε.

    Args:
        x0: (B, C, H, W) clean images.
        t: (B,) long, 0-based step indices (entry i is diffusion step i + 1).
        noise: (B, C, H, W) standard normal ε.
        sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod: (T,) schedule buffers.
    Returns:
        (B, C, H, W) noised images, dtype of ``x0``.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    if t.ndim != 1 or t.shape[0] != x0.shape[0]:
        raise ValueError(f"t must be (B,) = ({x0.shape[0]},), got {tuple(t.shape)}")
    a = _extract(sqrt_alphas_cumprod, t, x0.ndim).to(x0.dtype)
    b = _extract(sqrt_one_minus_alphas_cumprod, t, x0.ndim).to(x0.dtype)
    return a * x0 + b * noise

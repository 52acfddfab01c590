"""Gaussian diffusion around any ε-predicting denoiser: training loss and two samplers.

``GaussianDiffusion(denoiser, timesteps=T)`` takes any module ``denoiser(x, t, y) -> ε̂`` with
x: (B, C, H, W), t: (B,) long 0-based step indices, y: (B,) long labels (``null_class`` = unconditional).

* Forward process: x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (cosine schedule, :mod:`mer.augment.schedule`).
* Loss: ‖ε − ε_θ(x_t, t, y)‖² averaged (ε-prediction, "L_simple" of Ho et al. 2020).
* Ancestral sampler (Ho et al. eq. 11, the seed paper's eq. 10):
      x_{t−1} = 1/√α_t · (x_t − β_t/√(1 − ᾱ_t) · ε_θ) + σ_t z,   σ_t² = β̃_t,  z = 0 at the last step.
  With ``clip_x0`` the same step is taken through x̂₀ = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t clamped to a range and
  the posterior mean μ̃(x̂₀, x_t); without clipping both forms are identical (tested).
* DDIM sampler (Song et al. 2021) on an evenly spaced sub-sequence of ``steps`` timesteps,
  deterministic for ``eta = 0``.

All randomness of sampling comes from a ``torch.Generator`` built from ``seed``, so a given seed gives
the same samples (on the same machine and thread count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .schedule import _extract, cosine_betas, q_sample, schedule_terms

__all__ = ["GaussianDiffusion"]

ClipRange = tuple[torch.Tensor | float, torch.Tensor | float] | None


class GaussianDiffusion(nn.Module):
    """DDPM wrapper: ``loss(x0, y)`` for training, ``sample_ancestral`` / ``sample_ddim`` for generation.

    Args:
        denoiser: module called as ``denoiser(x (B,C,H,W), t (B,) long, y (B,) long) -> (B,C,H,W)``.
        timesteps: T, number of diffusion steps.
        null_class: label fed for the unconditional branch of classifier-free guidance (None: not used).
        gaussian_skip: predict ε̂ = ε_G(x_t, t, y) + denoiser(x_t, t, y), where ε_G is the exact ε-predictor
            for Gaussian data: N(0, I) (``prior_mean``/``prior_var`` None) or, per class, N(μ_y, diag σ²_y)
            with ε_G = √(1−ᾱ_t)(x_t − √ᾱ_t μ_y) / (ᾱ_t σ²_y + 1 − ᾱ_t). The network learns the correction.
            This is still ε-prediction with the MSE on ε; it only changes what the network has to output,
            so a small network on a CPU budget does not have to learn the identity at large t.
        prior_mean, prior_var: (K', C, H, W) per-label mean and variance images for ``gaussian_skip``
            (K' covers every label fed, the null class included); stored as buffers.
        s: cosine schedule offset; max_beta: β clip.
    Buffers (float32, shape (T,)): every entry of :func:`mer.augment.schedule.schedule_terms`.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        timesteps: int = 1000,
        *,
        null_class: int | None = None,
        gaussian_skip: bool = False,
        prior_mean: torch.Tensor | None = None,
        prior_var: torch.Tensor | None = None,
        s: float = 0.008,
        max_beta: float = 0.999,
    ):
        super().__init__()
        self.denoiser = denoiser
        self.timesteps = int(timesteps)
        self.null_class = null_class
        self.gaussian_skip = bool(gaussian_skip)
        if (prior_mean is None) != (prior_var is None):
            raise ValueError("give both prior_mean and prior_var, or neither")
        if prior_mean is not None and (prior_mean.ndim != 4 or prior_mean.shape != prior_var.shape):
            raise ValueError(
                f"prior_mean/var must be (K, C, H, W) alike, got {tuple(prior_mean.shape)}, {tuple(prior_var.shape)}"
            )
        self.register_buffer("prior_mean", None if prior_mean is None else prior_mean.float())
        self.register_buffer("prior_var", None if prior_var is None else prior_var.float().clamp(min=1e-4))
        for name, value in schedule_terms(cosine_betas(self.timesteps, s, max_beta)).items():
            self.register_buffer(name, value.float(), persistent=False)

    # ------------------------------------------------------------------ training
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t for (B, C, H, W) ``x0``, (B,) 0-based ``t`` and (B, C, H, W) ``noise``."""
        return q_sample(x0, t, noise, self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod)

    def loss(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        p_uncond: float = 0.0,
    ) -> torch.Tensor:
        """Scalar MSE between ε and ε_θ(x_t, t, y) with t ~ U{0..T−1}, ε ~ N(0, I).

        x0: (B, C, H, W); y: (B,) long. With ``p_uncond > 0`` each label is replaced by the null class
        with that probability (classifier-free guidance training).
        """
        b = x0.shape[0]
        t = torch.randint(0, self.timesteps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if p_uncond > 0:
            if self.null_class is None:
                raise ValueError("p_uncond > 0 needs GaussianDiffusion(null_class=...)")
            drop = torch.rand(b, generator=generator, device=x0.device) < p_uncond
            y = torch.where(drop, torch.full_like(y, self.null_class), y)
        return F.mse_loss(self.model_eps(self.q_sample(x0, t, noise), t, y), noise)

    def model_eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t, y): the denoiser's output, plus the Gaussian ε_G with ``gaussian_skip``. (B,C,H,W)."""
        eps = self.denoiser(x, t, y)
        if self.gaussian_skip:
            if self.prior_mean is None:
                eps = eps + _extract(self.sqrt_one_minus_alphas_cumprod, t, x.ndim) * x
            else:
                ab = _extract(self.alphas_cumprod, t, x.ndim)
                mu, var = self.prior_mean[y], self.prior_var[y]
                eps = eps + (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * var + 1 - ab)
        return eps

    # ------------------------------------------------------------------ sampling helpers
    def predict_eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance: float = 1.0) -> torch.Tensor:
        """ε̂ = ε_θ(x, t, y); with classifier-free guidance (``guidance != 1``)
        ε̂ = ε_θ(x, t, ∅) + guidance · (ε_θ(x, t, y) − ε_θ(x, t, ∅)).  x (B,C,H,W), t and y (B,)."""
        if guidance == 1.0:
            return self.model_eps(x, t, y)
        if self.null_class is None:
            raise ValueError("guidance != 1 needs a null class (GaussianDiffusion(null_class=...))")
        eps_c = self.model_eps(x, t, y)
        eps_u = self.model_eps(x, t, torch.full_like(y, self.null_class))
        return eps_u + guidance * (eps_c - eps_u)

    def predict_x0(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t; all (B, C, H, W), t (B,)."""
        a = _extract(self.sqrt_alphas_cumprod, t, x.ndim)
        b = _extract(self.sqrt_one_minus_alphas_cumprod, t, x.ndim)
        return (x - b * eps) / a

    @staticmethod
    def _clip(x0: torch.Tensor, clip_x0: ClipRange) -> torch.Tensor:
        if clip_x0 is None:
            return x0
        lo, hi = (torch.as_tensor(v, dtype=x0.dtype, device=x0.device) for v in clip_x0)
        if lo.ndim == 1:  # per-channel (C,)
            lo, hi = lo[None, :, None, None], hi[None, :, None, None]
        return torch.maximum(torch.minimum(x0, hi), lo)

    def _check(self, shape: Sequence[int], y: torch.Tensor) -> None:
        if len(shape) != 4:
            raise ValueError(f"shape must be (B, C, H, W), got {tuple(shape)}")
        if y.shape != (shape[0],):
            raise ValueError(f"y must be (B,) = ({shape[0]},), got {tuple(y.shape)}")

    # ------------------------------------------------------------------ samplers
    @torch.no_grad()
    def p_sample(
        self,
        x: torch.Tensor,
        i: int,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        guidance: float = 1.0,
        clip_x0: ClipRange = None,
    ) -> torch.Tensor:
        """One ancestral step from x_t (0-based index ``i`` = t − 1) to x_{t−1}; (B, C, H, W) in and out."""
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        eps = self.predict_eps(x, t, y, guidance)
        if clip_x0 is None:  # eq. 10: 1/√α_t (x_t − β_t/√(1−ᾱ_t) ε) + σ_t z
            mean = (x - self.betas[i] / self.sqrt_one_minus_alphas_cumprod[i] * eps) / self.alphas[i].sqrt()
        else:  # same step through the clipped x̂₀ and the posterior mean μ̃(x̂₀, x_t)
            x0 = self._clip(self.predict_x0(x, t, eps), clip_x0)
            mean = self.posterior_mean_coef1[i] * x0 + self.posterior_mean_coef2[i] * x
        if i == 0:
            return mean
        z = _randn(x.shape, generator, x)
        return mean + (0.5 * self.posterior_log_variance_clipped[i]).exp() * z

    @torch.no_grad()
    def sample_ancestral(
        self,
        shape: Sequence[int],
        y: torch.Tensor,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        guidance: float = 1.0,
        clip_x0: ClipRange = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate (B, C, H, W) images of classes ``y`` (B,) with all T ancestral steps."""
        self._check(shape, y)
        g = generator if generator is not None else _generator(seed)
        x = _randn(shape, g, self.betas)
        for i in tqdm(range(self.timesteps - 1, -1, -1), desc="ddpm sample", disable=not progress, leave=False):
            x = self.p_sample(x, i, y, generator=g, guidance=guidance, clip_x0=clip_x0)
        return x

    @torch.no_grad()
    def sample_ddim(
        self,
        shape: Sequence[int],
        y: torch.Tensor,
        *,
        steps: int = 50,
        eta: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        guidance: float = 1.0,
        clip_x0: ClipRange = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate (B, C, H, W) images with DDIM on ``steps`` evenly spaced timesteps (eta=0: deterministic
        given the initial noise)."""
        self._check(shape, y)
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        g = generator if generator is not None else _generator(seed)
        seq = torch.linspace(self.timesteps - 1, 0, steps).round().long().unique_consecutive().tolist()
        x = _randn(shape, g, self.betas)
        ac = self.alphas_cumprod
        for k, i in enumerate(tqdm(seq, desc="ddim sample", disable=not progress, leave=False)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            eps = self.predict_eps(x, t, y, guidance)
            x0 = self._clip(self.predict_x0(x, t, eps), clip_x0)
            if clip_x0 is not None:  # keep ε consistent with the clipped x̂₀
                eps = (x - ac[i].sqrt() * x0) / (1 - ac[i]).sqrt()
            a_prev = ac[seq[k + 1]] if k + 1 < len(seq) else ac.new_ones(())
            sigma = eta * ((1 - a_prev) / (1 - ac[i]) * (1 - ac[i] / a_prev)).clamp(min=0).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0 and k + 1 < len(seq):
                x = x + sigma * _randn(x.shape, g, x)
        return x


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def _randn(shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the CPU generator (reproducible everywhere), moved to ``like``'s device."""
    return torch.randn(tuple(shape), generator=generator).to(device=like.device, dtype=like.dtype)

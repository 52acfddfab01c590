"""Training the DDPM: typed config, a minibatch loader over in-memory arrays, Adam + EMA for a fixed budget.

Defaults (see docs/augment.md for the measurements behind them) are sized so that training on ~400
images of 3 × 28 × 28 plus sampling a class-balancing set takes well under a minute per fold on one
CPU core of the development machine.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mer.options import option

from .diffusion import GaussianDiffusion
from .unet import UNet

__all__ = ["DDPMConfig", "ArrayBatches", "TrainResult", "build_diffusion", "class_prior", "train_ddpm"]

SAMPLERS = ("ddim", "ancestral")
_G = "DDPM settings (mer.augment.DDPMConfig)"


@dataclass(frozen=True)
class DDPMConfig:
    """Every setting of DDPM augmentation; hashed (except ``progress``) into the cache key."""

    # denoiser (mer.augment.unet.UNet)
    base_channels: int = option(16, "U-Net channels at full resolution", group=_G)
    channel_mults: tuple[int, ...] = option((1, 2, 2), "U-Net channel multiplier per level (28 -> 14 -> 7)", group=_G)
    emb_dim: int = option(64, "width of the time + class conditioning vector", group=_G)
    dropout: float = option(0.0, "U-Net dropout", group=_G)
    # diffusion
    timesteps: int = option(1000, "T of the cosine schedule", group=_G)
    gaussian_skip: bool = option(True, "ε̂ = ε_Gaussian(x_t, t, y) + U-Net(x_t, t, y) (see GaussianDiffusion)", group=_G)
    class_prior: bool = option(
        True, "ε_Gaussian from per-class mean/variance images of the training data (else N(0, I))", group=_G
    )
    # training
    train_steps: int = option(300, "fixed budget of Adam steps (no early stopping, no validation data)", group=_G)
    batch_size: int = option(32, "DDPM minibatch size", group=_G)
    lr: float = option(2e-3, "DDPM Adam learning rate", group=_G)
    weight_decay: float = option(0.0, "DDPM Adam weight decay", group=_G)
    grad_clip: float | None = option(1.0, "max gradient norm (none: off)", group=_G)
    ema_decay: float | None = option(0.995, "EMA of the weights used for sampling (none: the raw weights)", group=_G)
    p_uncond: float = option(0.0, "label-drop probability for classifier-free guidance (0: off)", group=_G)
    # sampling
    sampler: str = option(
        "ddim", "ddim (deterministic, --sample-steps steps) or ancestral (all T steps)", choices=SAMPLERS, group=_G
    )
    sample_steps: int = option(15, "DDIM steps", group=_G)
    eta: float = option(0.0, "DDIM stochasticity (0: deterministic given the seed)", group=_G)
    guidance: float = option(
        1.0, "classifier-free guidance scale (1: plain conditional; != 1 needs p_uncond > 0)", group=_G
    )
    clip_x0: bool = option(True, "clamp x̂₀ to the training data's per-channel range (in standardised units)", group=_G)
    clip_margin: float = option(0.1, "widen that range by this fraction of its width on each side", group=_G)
    sample_batch: int = option(256, "images denoised at once", group=_G)
    # display only
    progress: bool = True  # tqdm bars (not part of the cache key; `mer augment --no-progress`)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"DDPMConfig: {msg}")

        if self.base_channels < 1 or self.emb_dim < 2 or self.emb_dim % 2:
            bad("base_channels must be >= 1 and emb_dim an even number >= 2")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            bad(f"channel_mults must be positive integers, got {self.channel_mults}")
        if self.timesteps < 2:
            bad(f"timesteps must be >= 2, got {self.timesteps}")
        if self.train_steps < 0 or self.batch_size < 1:
            bad("train_steps must be >= 0 and batch_size >= 1")
        if self.lr <= 0:
            bad(f"lr must be > 0, got {self.lr}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            bad(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if not 0.0 <= self.p_uncond < 1.0:
            bad(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if self.sampler not in SAMPLERS:
            bad(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not 1 <= self.sample_steps <= self.timesteps:
            bad(f"sample_steps must be in [1, timesteps={self.timesteps}], got {self.sample_steps}")
        if self.guidance != 1.0 and self.p_uncond == 0.0:
            bad("guidance != 1 needs an unconditional model: set p_uncond > 0 (e.g. 0.1)")
        if self.sample_batch < 1 or self.clip_margin < 0:
            bad("sample_batch must be >= 1 and clip_margin >= 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        return d

    def key_dict(self) -> dict:
        """The settings that change the trained model or its samples (everything but ``progress``)."""
        d = self.to_dict()
        d.pop("progress")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DDPMConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"DDPMConfig: unknown settings {sorted(unknown)}; known: {sorted(names)}")
        d = dict(d)
        if "channel_mults" in d:
            d["channel_mults"] = tuple(d["channel_mults"])
        return cls(**d)


def build_diffusion(
    cfg: DDPMConfig,
    num_classes: int,
    in_channels: int = 3,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> GaussianDiffusion:
    """The U-Net denoiser for ``num_classes`` classes (+ null class) wrapped in a GaussianDiffusion.

    prior: (mean, var), each (num_classes + 1, C, H, W), used when ``cfg.gaussian_skip and cfg.class_prior``.
    """
    unet = UNet(num_classes, in_channels, cfg.base_channels, cfg.channel_mults, cfg.emb_dim, cfg.dropout)
    mean, var = prior if (prior is not None and cfg.gaussian_skip and cfg.class_prior) else (None, None)
    return GaussianDiffusion(
        unet, cfg.timesteps, null_class=num_classes, gaussian_skip=cfg.gaussian_skip, prior_mean=mean, prior_var=var
    )


def class_prior(
    z: np.ndarray, y: np.ndarray, num_classes: int, min_var: float = 1e-2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean and variance images of (standardised) training images z (M, C, H, W).

    Returns (mean, var), each (num_classes + 1, C, H, W) float32: row c for class c (classes absent from
    ``y`` and the last row, the null class, get the statistics of all of z); variances floored at ``min_var``.
    """
    z64 = z.astype(np.float64)
    mean = np.repeat(z64.mean(0, keepdims=True), num_classes + 1, 0)
    var = np.repeat(z64.var(0, keepdims=True), num_classes + 1, 0)
    for c in np.unique(y):
        zc = z64[y == c]
        mean[c] = zc.mean(0)
        var[c] = zc.var(0) if len(zc) > 1 else var[c]
    return torch.from_numpy(mean).float(), torch.from_numpy(np.maximum(var, min_var)).float()


class ArrayBatches:
    """Endless shuffled minibatches of exactly ``batch_size`` rows over in-memory arrays.

    The rows are drawn from consecutive random permutations (epochs), so every row is used once per
    epoch; a batch may straddle two epochs (then it could hold one row twice).

    Args:
        x: (M, C, H, W) float array; y: (M,) int array.
        batch_size: rows per batch (capped at M).
        seed: seed of the shuffling.
    Iterating yields ``(xb (B, C, H, W) float32 tensor, yb (B,) long tensor)`` holding exactly rows of x, y.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must be non-empty and equally long, got {len(x)} and {len(y)}")
        self.x = x
        self.y = y
        self.batch_size = min(int(batch_size), len(x))
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(self.seed)
        m = len(self.x)
        queue = np.zeros(0, dtype=np.int64)
        while True:
            while len(queue) < self.batch_size:  # epochs follow each other: every row once per epoch
                queue = np.concatenate([queue, rng.permutation(m)])
            idx, queue = np.sort(queue[: self.batch_size]), queue[self.batch_size :]
            yield self.batch(idx)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` as tensors."""
        return (
            torch.from_numpy(np.ascontiguousarray(self.x[idx], dtype=np.float32)),
            torch.from_numpy(np.asarray(self.y[idx], dtype=np.int64)),
        )


@dataclass
class TrainResult:
    """Outcome of :func:`train_ddpm`: per-step losses and the number of rows seen."""

    losses: list[float] = field(default_factory=list)
    rows_seen: int = 0


def train_ddpm(
    diffusion: GaussianDiffusion,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | ArrayBatches,
    cfg: DDPMConfig,
    *,
    seed: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``diffusion`` in place for ``cfg.train_steps`` Adam steps on ``batches``.

    ``transform`` maps each raw (B, C, H, W) batch to the model's units (e.g. channel standardisation).
    With ``cfg.ema_decay`` the EMA weights (warm-up ``min(decay, (1+n)/(10+n))``) are copied into the
    denoiser at the end, so the returned module is the one to sample from. Leaves the module in eval mode.
    """
    denoiser = diffusion.denoiser
    opt = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False) if cfg.ema_decay is not None else None
    g = torch.Generator().manual_seed(int(seed))
    result = TrainResult()
    it = iter(batches)
    denoiser.train()
    bar = tqdm(range(cfg.train_steps), desc="ddpm train", disable=not cfg.progress, leave=False)
    for n in bar:
        xb, yb = next(it)
        result.rows_seen += len(xb)
        if transform is not None:
            xb = transform(xb)
        loss = diffusion.loss(xb, yb, generator=g, p_uncond=cfg.p_uncond)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DDPM loss became {loss.detach().item()} at step {n}; lower DDPMConfig.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(denoiser.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            _ema_update(ema, denoiser, min(cfg.ema_decay, (1 + n) / (10 + n)))
        result.losses.append(loss.detach().item())
        if n % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(result.losses[-20:]):.4f}")
    if ema is not None:
        denoiser.load_state_dict(ema.state_dict())
    denoiser.eval()
    return result


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        be.copy_(bm)

"""A compact class-conditional U-Net denoiser ε_θ(x_t, t, y) for small 3 × H × W flow images.

Layout (``base=16, mults=(1, 2, 2)``, input 28 × 28):

    conv3×3 3→16 ─ [Res 16] ─────────────────────────────────────── skip ─┐
                   down 28→14 ─ [Res 32] ─────────────────── skip ─┐       │
                                down 14→7 ─ [Res 32] ─ skip ─┐     │       │
                                            mid [Res 32]     │     │       │
                                            [Res 64→32] ◀────┘     │       │
                                up 7→14 ─ [Res 64→32] ◀────────────┘       │
                   up 14→28 ─ [Res 48→16] ◀────────────────────────────────┘
    GroupNorm ─ SiLU ─ conv3×3 16→3  (zero-initialised, so ε̂ = 0 at the start)

Every residual block adds a projection of the conditioning vector
``emb = MLP(sinusoidal(t)) + Embedding(y)``. Class index ``num_classes`` is the *null* class used for
classifier-free guidance (trained only when the caller drops labels). Down-sampling is a stride-2
conv and up-sampling is nearest-neighbour interpolation *to the skip's size*, so odd sizes (7, 25, …)
work: any H, W ≥ 4 is accepted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "sinusoidal_embedding"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style embedding of (B,) timesteps -> (B, dim) float32 ([cos | sin] halves)."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv ×2 with the conditioning added in between; (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """Class-conditional ε-predictor for (B, C, H, W) images.

    Args:
        num_classes: number of real classes K; labels are 0..K−1 and K is the null class.
        in_channels: C (3: u, v, strain).
        base: channels at full resolution.
        mults: channel multiplier per level; ``len(mults) − 1`` down-samplings.
        emb_dim: width of the time/class conditioning vector.
        dropout: dropout inside residual blocks.
    forward(x (B, C, H, W) float, t (B,) long/float step indices, y (B,) long in [0, K]) -> (B, C, H, W).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base: int = 16,
        mults: tuple[int, ...] = (1, 2, 2),
        emb_dim: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not mults:
            raise ValueError("mults must name at least one level")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)  # index num_classes = null class
        chs = [base * m for m in mults]
        self.stem = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        c = chs[0]
        for i, ch in enumerate(chs):
            if i > 0:
                self.downsamples.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            self.down_blocks.append(ResBlock(c, ch, emb_dim, dropout))
            c = ch
        self.mid = ResBlock(c, c, emb_dim, dropout)
        self.up_blocks = nn.ModuleList()
        for ch in reversed(chs):
            self.up_blocks.append(ResBlock(c + ch, ch, emb_dim, dropout))
            c = ch
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 4:
            raise ValueError(f"images must be at least 4 × 4, got {tuple(x.shape[-2:])}")
        emb = self.time_mlp(sinusoidal_embedding(t, self.emb_dim)) + self.class_emb(y.long())
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down_blocks):
            if i > 0:
                h = self.downsamples[i - 1](h)
            h = block(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for block in self.up_blocks:
            s = skips.pop()
            if h.shape[-2:] != s.shape[-2:]:
                h = F.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = block(torch.cat([h, s], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))

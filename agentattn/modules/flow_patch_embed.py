"""``FlowPatchEmbed``: patch embedding with a learnable absolute position embedding (LAPE), one fused op."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from agentattn.ops.flow_patch_embed.op import flow_patch_embed

Tensor = torch.Tensor


class FlowPatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> ``embed_dim`` tokens, plus LAPE.

    Args:
        in_chans: input channels C (3 for u, v, strain).
        embed_dim: token width D.
        patch_size: p.
        grid_size: (H/p, W/p) the position embedding is sized for (int for square).
        pos: 'learned' (LAPE: one D-vector per patch position, ``nn.init.trunc_normal_(std=0.02)``, whose
            default cut at +-2 is absolute, as in timm) or 'none'.
        flatten: return (B, N, D) tokens instead of a (B, D, H/p, W/p) map.
        fused: run the fused op (default); False runs the reference composition (conv + bias + pos add)
            on the same parameters. Can be flipped on an instance (``m.fused = False``).

    Parameters: ``proj`` (an ``nn.Conv2d(C, D, p, stride=p)``, so plain patch-embedding weights load
    as they are) and ``pos_embed`` (D, H/p, W/p). Inputs whose grid differs from ``grid_size`` get the
    position embedding resized bicubically.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        patch_size: int = 4,
        grid_size=7,
        pos: str = "learned",
        flatten: bool = False,
        fused: bool = True,
    ):
        super().__init__()
        if pos not in ("learned", "none"):
            raise ValueError(f"pos must be 'learned' or 'none', got {pos!r}")
        gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        if min(in_chans, embed_dim, patch_size, gh, gw) < 1:
            raise ValueError(
                f"in_chans, embed_dim, patch_size and grid_size must be >= 1, got {in_chans}, "
                f"{embed_dim}, {patch_size}, {grid_size}"
            )
        self.in_chans, self.embed_dim = int(in_chans), int(embed_dim)
        self.patch_size, self.grid_size, self.flatten = int(patch_size), (int(gh), int(gw)), flatten
        self.fused = fused
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        if pos == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(embed_dim, gh, gw))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_parameter("pos_embed", None)

    def pos_for(self, gh: int, gw: int) -> Tensor | None:
        """The position embedding for a (gh, gw) grid, (D, gh, gw); bicubic resize when needed."""
        if self.pos_embed is None or (gh, gw) == self.grid_size:
            return self.pos_embed
        return F.interpolate(self.pos_embed[None], size=(gh, gw), mode="bicubic", align_corners=False)[0]

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, D, H/p, W/p), or (B, N, D) with ``flatten``."""
        p = self.patch_size
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must be (B, C, H, W) with C = in_chans = {self.in_chans}, got {tuple(x.shape)}")
        pos = self.pos_for(x.shape[-2] // p, x.shape[-1] // p)
        return flow_patch_embed(
            x,
            self.proj.weight,
            self.proj.bias,
            pos,
            p,
            flatten=self.flatten,
            backend=None if self.fused else "reference",
        )

    def extra_repr(self) -> str:
        return (
            f"grid_size={self.grid_size}, pos={'learned' if self.pos_embed is not None else 'none'}, "
            f"flatten={self.flatten}, fused={self.fused}"
        )

    # ------------------------------------------------------------------ weight loading
    @torch.no_grad()
    def load_conv_weights(self, weight: Tensor, bias: Tensor | None = None) -> FlowPatchEmbed:
        """Load a plain patch-embedding conv, weight (D, C, p, p) and bias (D)."""
        if tuple(weight.shape) != tuple(self.proj.weight.shape):
            raise ValueError(f"weight must be {tuple(self.proj.weight.shape)}, got {tuple(weight.shape)}")
        self.proj.weight.copy_(weight)
        if bias is not None:
            if tuple(bias.shape) != tuple(self.proj.bias.shape):
                raise ValueError(f"bias must be {tuple(self.proj.bias.shape)}, got {tuple(bias.shape)}")
            self.proj.bias.copy_(bias)
        return self

    @torch.no_grad()
    def load_htnet_weights(self, weight: Tensor, bias: Tensor | None = None) -> FlowPatchEmbed:
        """Load HTNet's patch embedding: rearrange ``b c (h p1) (w p2) -> b (p1 p2 c) h w`` followed by a
        1x1 conv with weight (D, p·p·C, 1, 1). Channel (p1·p + p2)·C + c of the 1x1 conv is pixel (p1, p2)
        of input channel c, i.e. ``weight[D, c, p1, p2]`` of the equivalent p x p conv."""
        D, C, p, _ = self.proj.weight.shape
        if tuple(weight.shape) not in ((D, p * p * C, 1, 1), (D, p * p * C)):
            raise ValueError(f"HTNet patch weight must be ({D}, {p * p * C}, 1, 1), got {tuple(weight.shape)}")
        w = weight.reshape(D, p, p, C).permute(0, 3, 1, 2)
        return self.load_conv_weights(w, bias)

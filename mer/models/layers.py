"""HTNet building blocks.

The released model runs its transformer blocks on channels-first maps with 1x1 convolutions and a
channel LayerNorm; a 1x1 conv on a (B, C, h, w) map is a Linear on its (B, h·w, C) tokens and the channel
LayerNorm (biased variance, eps 1e-5) is ``F.layer_norm`` over C, so the blocks here run on tokens: the
same numbers, and 3-5x faster on CPU (no strided channel reductions, no mkldnn 1x1 conv backward).
``mer.models.convert`` reshapes released weights ((out, in, 1, 1) -> (out, in); g, b (1, C, 1, 1) -> (C)).

Reading order: ``LayerNorm2d`` -> ``FeedForward`` -> ``SoftmaxAttention`` -> ``Block`` -> ``Aggregate``.

An attention branch is any module ``branch(x, hw=(h, w))`` mapping the tokens of a batch of blocks
(B·blocks, h·w, C) -> same: ``SoftmaxAttention`` here, or ``agentattn.AgentAttention(dim, heads,
agent_num=n, window=(h, w), num_prefix_tokens=0)`` as it is. ``Block.attn = None`` removes the branch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (the released channel ``LayerNorm``: biased
    variance, eps 1e-5; its ``g``/``b`` are our ``weight``/``bias``)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class FeedForward(nn.Module):
    """Linear C -> mult·C, GELU, dropout, Linear mult·C -> C, dropout (the release's 1x1 convs).
    (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, mlp_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * mlp_mult)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dim * mlp_mult, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class SoftmaxAttention(nn.Module):
    """Multi-head softmax attention over the tokens of each block (the released ``Attention``).

    ``qkv``: Linear C -> 3·inner without bias (the release's ``to_qkv`` 1x1 conv); q, k, v are its
    consecutive thirds, heads contiguous ``dim_head`` slices. ``proj``: Linear inner -> C (``to_out.0``),
    then dropout. Scale dim_head^-0.5, dropout also on the attention probabilities. inner = dim_head·heads
    with the release's default dim_head = dim // heads (inner < dim when heads does not divide dim).
    The names and shapes match ``agentattn.AgentAttention``'s ``qkv``/``proj`` when inner == dim.

    ``fused``: True = ``F.scaled_dot_product_attention``; False = the explicit softmax(q kᵀ·s) v reference
    (the same numbers; FlopCounterMode counts only the reference, it has no formula for CPU SDPA).

    Shapes: forward(x (Bn, N, C), hw=None) -> (Bn, N, C); ``hw`` is accepted for the branch interface.
    """

    def __init__(self, dim: int, heads: int, dim_head: int | None = None, dropout: float = 0.0, fused: bool = True):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.dim_head = dim // heads if dim_head is None else int(dim_head)
        if self.dim_head < 1:
            raise ValueError(f"dim_head must be >= 1 (dim={dim}, heads={heads}); lower heads or raise dim")
        self.inner_dim = self.dim_head * heads
        self.scale = self.dim_head**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, self.inner_dim * 3, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(self.inner_dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, dim_head={self.dim_head}, fused={self.fused}"

    def forward(self, x: Tensor, hw=None) -> Tensor:
        Bn, N, _ = x.shape
        H, d = self.heads, self.dim_head
        q, k, v = self.qkv(x).reshape(Bn, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # (Bn, H, N, d)
        p = self.attn_drop.p if self.training else 0.0
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:
            attn = self.attn_drop((q @ k.transpose(-2, -1)).mul(self.scale).softmax(dim=-1))
            out = attn @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(Bn, N, self.inner_dim)))


def set_attention_fused(attention_layers, fused: bool | None) -> None:
    """Set the ``fused`` switch of every attention branch in ``attention_layers`` ((name, module) pairs):
    softmax branches take ``fused`` (None means True, SDPA), others (agent attention) take it as is."""
    for _, branch in attention_layers:
        if isinstance(branch, SoftmaxAttention):
            branch.fused = True if fused is None else fused
        elif hasattr(branch, "fused"):
            branch.fused = fused


class Block(nn.Module):
    """Pre-norm transformer block on tokens, (Bn, N, C) -> (Bn, N, C):

        x <- (2 - lam)·x + lam·attn(norm1(x), hw)    (lam = ``attn_lambda``, 1 = the usual x + attn(...))
        x <- x + mlp(norm2(x))

    With ``attn is None`` (removed; ``norm1`` is gone too) the first line is x <- ``skip_scale``·x: 1.0 skips
    the sub-layer, 2.0 is "the attention branch replaced by identity" (x + x), the end point of the ESAAT /
    "MLP can be a good transformer learner" fade-out (lam 1 -> 0). Both are plain float attributes (not in
    the state_dict): record them with the experiment.
    """

    def __init__(self, dim: int, attn: nn.Module | None, mlp_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim) if attn is not None else None
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_mult, dropout)
        self.attn_lambda = 1.0
        self.skip_scale = 1.0

    def extra_repr(self) -> str:
        return f"attn_lambda={self.attn_lambda}, skip_scale={self.skip_scale}"

    def set_attention(self, attn: nn.Module | None, skip_scale: float = 1.0) -> None:
        """Replace the attention branch; ``None`` removes it together with its norm (parameters gone) and
        sets ``skip_scale`` (1.0: x passes unchanged; 2.0: identity branch, x + x)."""
        self.attn_lambda = 1.0
        if attn is None:
            self.attn, self.norm1, self.skip_scale = None, None, float(skip_scale)
            return
        if self.norm1 is None:
            self.norm1 = nn.LayerNorm(self.dim).to(self.norm2.weight)
        self.attn, self.skip_scale = attn, 1.0

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        if self.attn is not None:
            lam = self.attn_lambda
            y = self.attn(self.norm1(x), hw=hw)
            x = x + y if lam == 1.0 else (2.0 - lam) * x + lam * y
        elif self.skip_scale != 1.0:
            x = self.skip_scale * x
        return x + self.mlp(self.norm2(x))


class Aggregate(nn.Sequential):
    """Between levels: Conv2d 3x3 C -> C_out, channel LayerNorm, MaxPool2d(3, 2, 1).
    (B, C, H, W) -> (B, C_out, ceil(H/2), ceil(W/2))."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__(
            nn.Conv2d(dim, dim_out, 3, padding=1), LayerNorm2d(dim_out, eps=1e-5), nn.MaxPool2d(3, stride=2, padding=1)
        )

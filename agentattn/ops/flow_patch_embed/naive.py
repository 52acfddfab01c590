"""Reference flow-patch embedding: non-overlapping p x p patch projection + bias + absolute position.

    tokens[b, :, i, j] = W · x[b, :, i·p:(i+1)·p, j·p:(j+1)·p] + bias + pos[:, i, j]

x (B, C, H, W); weight (D, C, p, p) laid out like ``nn.Conv2d(C, D, p, stride=p).weight``; bias (D) or
None; pos (D, H/p, W/p) or None. Returns (B, D, H/p, W/p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def flow_patch_embed_ref(x: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None, patch_size: int) -> Tensor:
    out = F.conv2d(x, weight, bias, stride=patch_size)
    if pos is not None:
        out = out + pos.unsqueeze(0)
    return out


def flow_patch_embed_unfold(
    x: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None, patch_size: int
) -> Tensor:
    """The same map as unfold + matmul (a second, independent formulation used as a baseline)."""
    B, C, H, W = x.shape
    D = weight.shape[0]
    p = patch_size
    cols = F.unfold(x, kernel_size=p, stride=p)  # (B, C·p·p, L)
    out = weight.reshape(D, -1) @ cols  # (B, D, L)
    if bias is not None:
        out = out + bias[:, None]
    out = out.reshape(B, D, H // p, W // p)
    if pos is not None:
        out = out + pos.unsqueeze(0)
    return out

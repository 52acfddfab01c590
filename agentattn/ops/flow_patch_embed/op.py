"""flow_patch_embed: checks and dispatch. Fused kernels are registered here once they exist; until then
every device runs the reference (``naive.py``)."""
from __future__ import annotations

import torch

from agentattn.ops.flow_patch_embed.naive import flow_patch_embed_ref

Tensor = torch.Tensor


def check_inputs(x: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None, patch_size: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    p = int(patch_size)
    if p < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if H % p or W % p:
        raise ValueError(
            f"x spatial size (H, W) = ({H}, {W}) is not divisible by patch_size {p}; resize or pad the "
            f"input to a multiple of {p} (e.g. ({-(-H // p) * p}, {-(-W // p) * p}))"
        )
    if weight.dim() != 4 or weight.shape[1:] != (C, p, p):
        raise ValueError(f"weight must be (D, C, p, p) = (D, {C}, {p}, {p}), got {tuple(weight.shape)}")
    D = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (D,):
        raise ValueError(f"bias must be (D,) = ({D},), got {tuple(bias.shape)}")
    if pos is not None and tuple(pos.shape) != (D, H // p, W // p):
        raise ValueError(f"pos must be (D, H/p, W/p) = ({D}, {H // p}, {W // p}), got {tuple(pos.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("pos", pos)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name} is {t.dtype} on {t.device} but x is {x.dtype} on {x.device}")


def flow_patch_embed(x: Tensor, weight: Tensor, bias: Tensor | None = None, pos: Tensor | None = None,
                     patch_size: int | None = None, flatten: bool = False) -> Tensor:
    """Patch projection + bias + absolute position embedding in one op.

    x (B, C, H, W); weight (D, C, p, p); bias (D) or None; pos (D, H/p, W/p) or None.
    Returns (B, D, H/p, W/p), or (B, N, D) with N = (H/p)·(W/p) when ``flatten``.
    """
    p = int(weight.shape[-1] if patch_size is None else patch_size)
    check_inputs(x, weight, bias, pos, p)
    out = flow_patch_embed_ref(x, weight, bias, pos, p)
    return out.flatten(2).transpose(1, 2) if flatten else out

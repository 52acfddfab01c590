"""Transfer entropy of attention layers to the head.

    T(S) = H(head features, no layer skipped) - H(head features, the layers in S skipped)

measured on a calibration set (samples of the training subjects only: the caller picks them). "Skipped"
is the removal the pruned model will have: the branch is taken out of its block and the block computes
x' = skip_scale·x (2.0, the default: the attention branch became the identity, x + x, the end point of the
fade-out; 1.0: the sub-layer passes x unchanged). Head features = ``model.forward_head(model
.forward_features(x), pre_logits=True)``, the input of the classifier (B, C) (any model with those two
methods and the ESAAT hooks ``attention_layers()`` and ``block_of(name)``: ``HTNet``, ``VisionTransformer``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from mer.esaat.entropy import gaussian_entropy

Tensor = torch.Tensor


def check_model(model: nn.Module) -> None:
    """Raise a clear TypeError when ``model`` lacks the hooks ESAAT needs."""
    need = ("attention_layers", "block_of", "replace_attention", "forward_features", "forward_head")
    missing = [m for m in need if not hasattr(model, m)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} lacks {missing}: ESAAT works on models built from mer/agentattn "
            "attention blocks that expose the layer-access hooks (mer.models.HTNet, "
            "mer.models.vit.VisionTransformer)"
        )


@contextmanager
def skipped(model: nn.Module, names: Iterable[str], skip_scale: float = 2.0):
    """Temporarily remove the attention branches ``names`` (block: x' = skip_scale·x); restored on exit
    with the very same modules (no weight is touched)."""
    saved = []
    try:
        for name in names:
            blk = model.block_of(name)
            if blk.attn is None:
                raise ValueError(f"{name} is already removed")
            saved.append((blk, blk.attn, blk.norm1, blk.skip_scale, blk.attn_lambda))
            blk.attn, blk.norm1, blk.skip_scale, blk.attn_lambda = None, None, float(skip_scale), 1.0
        yield model
    finally:
        for blk, attn, norm1, s, lam in reversed(saved):
            blk.attn, blk.norm1, blk.skip_scale, blk.attn_lambda = attn, norm1, s, lam


@torch.no_grad()
def head_features(model: nn.Module, x: Tensor, batch: int = 256) -> Tensor:
    """The classifier's input features (n, C) of inputs ``x`` (n, ...) in eval mode (dropout off)."""
    was = model.training
    model.eval()
    try:
        out = [
            model.forward_head(model.forward_features(x[i : i + batch]), pre_logits=True)
            for i in range(0, len(x), batch)
        ]
    finally:
        model.train(was)
    return torch.cat(out).reshape(len(x), -1)


def set_entropy(
    model: nn.Module, x: Tensor, names: Sequence[str] = (), skip_scale: float = 2.0, full: bool = False
) -> float:
    """H(head features) with the layers ``names`` skipped (Σ log std, nats)."""
    with skipped(model, names, skip_scale):
        return gaussian_entropy(head_features(model, x), full=full)


def transfer_entropy(
    model: nn.Module,
    x: Tensor,
    names: Sequence[str],
    skip_scale: float = 2.0,
    full: bool = False,
    base: float | None = None,
) -> float:
    """T(S) = H(nothing skipped) - H(S skipped) on calibration inputs ``x``; ``base`` = a precomputed
    H(nothing skipped)."""
    check_model(model)
    h0 = set_entropy(model, x, (), skip_scale, full) if base is None else base
    return h0 - set_entropy(model, x, names, skip_scale, full)


def layer_transfer_entropy(
    model: nn.Module, x: Tensor, skip_scale: float = 2.0, full: bool = False
) -> dict[str, float]:
    """{layer name: T({layer})} for every present attention layer, in model order."""
    check_model(model)
    h0 = set_entropy(model, x, (), skip_scale, full)
    return {name: transfer_entropy(model, x, [name], skip_scale, full, base=h0) for name, _ in model.attention_layers()}

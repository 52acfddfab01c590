"""Removing attention layers and converting the rest to agent attention.

Removal: ``model.replace_attention(name, None, skip_scale)``: the branch and its pre-norm leave the module
(their parameters are gone from ``state_dict()``, their FLOPs from the forward) and the block computes
x' = skip_scale·x, x' + FFN(LN(x')). With skip_scale 2.0 (default) this is exactly the end point of the
fade-out (2 - λ)·x + λ·Attn(LN(x)) at λ = 0 (``model.set_attention_lambda``), so fading then folding is
continuous.

Conversion: ``model.convert_attention(name, 'agent')``: a softmax branch becomes
``agentattn.AgentAttention`` with the same qkv/proj weights (``mer.models.convert.softmax_to_agent`` in
HTNet); branches that already are agent attention are left as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from mer.models.layers import SoftmaxAttention


def remove_layers(model: nn.Module, names: Sequence[str], skip_scale: float = 2.0) -> nn.Module:
    """Remove the attention branches ``names`` in place (see the module docstring); returns ``model``."""
    present = {n for n, _ in model.attention_layers()}
    bad = [n for n in names if n not in present]
    if bad:
        raise ValueError(f"cannot remove {bad}: not present attention layers (present: {sorted(present)})")
    for name in names:
        model.replace_attention(name, None, skip_scale=skip_scale)
    return model


def convert_remaining(model: nn.Module, agent_num: int | None = None, exclude: Sequence[str] = ()) -> list[str]:
    """Convert every remaining softmax attention branch (except ``exclude``, e.g. layers still fading out)
    to agent attention (weights carried over); returns the converted names."""
    done = []
    for name, branch in model.attention_layers():
        if isinstance(branch, SoftmaxAttention) and name not in exclude:
            model.convert_attention(name, "agent", agent_num=agent_num)
            done.append(name)
    return done


def prune(
    model: nn.Module,
    names: Sequence[str],
    *,
    convert: bool = True,
    skip_scale: float = 2.0,
    agent_num: int | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Removal of ``names`` + conversion of the rest (no fine-tuning). A copy unless ``inplace``."""
    m = model if inplace else copy.deepcopy(model)
    remove_layers(m, names, skip_scale)
    if convert:
        convert_remaining(m, agent_num)
    return m


def fade_lambda(step: int, fade_steps: int) -> float:
    """λ of the fade-out after ``step`` optimiser steps: linear from 1 (step 0) to 0 (step ≥ fade_steps)."""
    if fade_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - step / fade_steps)


def set_fade(model: nn.Module, names: Sequence[str], lam: float) -> None:
    """Set the fade λ of the (still present) branches ``names``."""
    for name in names:
        model.set_attention_lambda(name, lam)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_cost(model: nn.Module, example: torch.Tensor) -> dict:
    """{'params', 'flops'} of ``model`` (FLOPs of one forward on ``example`` (1, ...), FlopCounterMode,
    see ``mer.models.profile``)."""
    from mer.models.profile import count_flops

    return {"params": count_params(model), "flops": count_flops(model, example[:1])["flops"]}

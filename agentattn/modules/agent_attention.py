"""``AgentAttention``: a drop-in module, parameter-compatible with the reference Agent-DeiT/PVT modules
(Han et al., ECCV 2024; ``LeapLabTHU/Agent-Attention``), running the fused op by default.

Token layout: x (B, P + h·w, C) with P = ``num_prefix_tokens`` leading tokens (1 for a DeiT class token,
0 for a pure grid as in PVT/Swin/HTNet) followed by an h x w grid in row-major order.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from agentattn.ops.agent_attention.naive import agent_attention_ref
from agentattn.ops.agent_attention.op import agent_attention

Tensor = torch.Tensor


def _pair(x) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    t = tuple(int(v) for v in x)
    if len(t) != 2:
        raise ValueError(f"expected an int or an (h, w) pair, got {x!r}")
    return t


def _agent_grid(agent_num) -> tuple[int, int]:
    if isinstance(agent_num, int):
        r = math.isqrt(agent_num)
        if r * r != agent_num:
            raise ValueError(
                f"agent_num={agent_num} is not a perfect square; pass an explicit agent grid such as "
                f"agent_num=({max(1, r)}, {math.ceil(agent_num / max(1, r))})"
            )
        return (r, r)
    return _pair(agent_num)


def fused_default() -> bool:
    """Global default of the ``fused`` switch: env ``AGENTATTN_FUSED`` (1/0), default on."""
    return os.environ.get("AGENTATTN_FUSED", "1") not in ("0", "false", "False")


class AgentAttention(nn.Module):
    """Agent attention with the reference module's parameters.

    Args:
        dim: channels C (divisible by ``num_heads``).
        num_heads: heads H.
        qkv_bias: bias in the ``qkv`` projection.
        attn_drop, proj_drop: dropout after each softmax / after ``proj``.
        agent_num: number of agents n, a perfect square, or an explicit agent grid (ah, aw).
        window: the token grid (h, w) (or an int for square grids) the biases are sized for.
        num_prefix_tokens: leading non-grid tokens (1 = class token, DeiT layout).
        fused: True = fused op, False = the reference composition; None = global default
            (``AGENTATTN_FUSED``). Both give the same numbers; switchable on the instance (``.fused``).

    Shapes: forward(x (B, P + h·w, C), hw=None) -> (B, P + h·w, C). ``hw`` overrides the grid for inputs of
    another size; the position biases are then interpolated (bilinear) to it.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, agent_num=49, window=14, num_prefix_tokens: int = 0,
                 fused: bool | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window = _pair(window)
        self.agent_grid = _agent_grid(agent_num)
        self.agent_num = self.agent_grid[0] * self.agent_grid[1]
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.fused = fused
        H, n, (wh, ww), P = num_heads, self.agent_num, self.window, self.num_prefix_tokens

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.an_bias = nn.Parameter(torch.zeros(H, n, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(H, n, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, H, n, wh, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, H, n, 1, ww))
        self.ha_bias = nn.Parameter(torch.zeros(1, H, wh, 1, n))
        self.wa_bias = nn.Parameter(torch.zeros(1, H, 1, ww, n))
        if P:
            self.ac_bias = nn.Parameter(torch.zeros(1, H, n, P))
            self.ca_bias = nn.Parameter(torch.zeros(1, H, P, n))
        for name, p in self.named_parameters(recurse=False):
            if name.endswith("_bias"):
                nn.init.trunc_normal_(p, std=0.02)
        self.pool = nn.AdaptiveAvgPool2d(output_size=self.agent_grid)

    @property
    def use_fused(self) -> bool:
        return fused_default() if self.fused is None else bool(self.fused)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, agent_grid={self.agent_grid}, "
                f"window={self.window}, num_prefix_tokens={self.num_prefix_tokens}, fused={self.fused}")

    # ------------------------------------------------------------------ biases
    def _resize_1d(self, p: Tensor, size: int, dim: int) -> Tensor:
        """Linear interpolation of a row/column bias along ``dim`` to ``size``."""
        if p.shape[dim] == size:
            return p
        moved = p.movedim(dim, -1)
        flat = moved.reshape(1, -1, moved.shape[-1])
        out = F.interpolate(flat, size=size, mode="linear", align_corners=False)
        return out.reshape(*moved.shape[:-1], size).movedim(-1, dim)

    def position_biases(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Stage-1 bias (1, H, n, P + h·w) and stage-2 bias (1, H, P + h·w, n), never per batch."""
        H, n = self.num_heads, self.agent_num
        b1 = F.interpolate(self.an_bias, size=(h, w), mode="bilinear").reshape(1, H, n, h * w)
        b1 = b1 + (self._resize_1d(self.ah_bias, h, 3) + self._resize_1d(self.aw_bias, w, 4)).reshape(1, H, n, h * w)
        b2 = F.interpolate(self.na_bias, size=(h, w), mode="bilinear").reshape(1, H, n, h * w).transpose(-2, -1)
        b2 = b2 + (self._resize_1d(self.ha_bias, h, 2) + self._resize_1d(self.wa_bias, w, 3)).reshape(1, H, h * w, n)
        if self.num_prefix_tokens:
            b1 = torch.cat([self.ac_bias, b1], dim=-1)
            b2 = torch.cat([self.ca_bias, b2], dim=-2)
        return b1, b2

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, tokens, C={self.dim}), got {tuple(x.shape)}")
        B, N, C = x.shape
        h, w = self.window if hw is None else _pair(hw)
        P, H, hd = self.num_prefix_tokens, self.num_heads, self.head_dim
        if N != P + h * w:
            raise ValueError(
                f"x has {N} tokens but the layout needs num_prefix_tokens + h*w = {P} + {h}*{w} = {P + h * w}; "
                f"pass hw=(h, w) for inputs of another size"
            )
        q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)                      # each (B, N, C)
        grid_q = q[:, P:, :].reshape(B, h, w, C).permute(0, 3, 1, 2)             # (B, C, h, w)
        agents = self.pool(grid_q).reshape(B, C, -1).permute(0, 2, 1)           # (B, n, C)
        heads = lambda t: t.reshape(B, t.shape[1], H, hd).permute(0, 2, 1, 3)   # noqa: E731 (B, H, *, hd)
        qh, kh, vh, ah = heads(q), heads(k), heads(v), heads(agents)
        b1, b2 = self.position_biases(h, w)
        p_drop = self.attn_drop.p if self.training else 0.0
        if self.use_fused and p_drop == 0.0:
            out = agent_attention(qh, kh, vh, ah, b1, b2, self.scale)
        else:  # reference composition (also the only path that applies attention dropout)
            out = agent_attention_ref(qh, kh, vh, ah, b1, b2, self.scale, attn_drop=p_drop, training=self.training)
        out = out.transpose(1, 2).reshape(B, N, C)
        v_grid = v[:, P:, :].reshape(B, h, w, C).permute(0, 3, 1, 2)
        local = self.dwc(v_grid).permute(0, 2, 3, 1).reshape(B, h * w, C)
        out = torch.cat([out[:, :P], out[:, P:] + local], dim=1) if P else out + local
        return self.proj_drop(self.proj(out))


def convert_pvt_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """State dict of the reference PVT-variant agent attention (separate ``q`` and ``kv`` linears) ->
    ours (one ``qkv``). Only ``sr_ratio == 1`` modules convert (``sr``/``norm`` keys raise).

    Load with ``AgentAttention(dim, heads, qkv_bias=..., agent_num=..., window=(H, W),
    num_prefix_tokens=0).load_state_dict(convert_pvt_state_dict(sd))``.
    """
    out = {}
    for key in state_dict:
        rest = key[len(prefix):] if key.startswith(prefix) else None
        if rest is None:
            continue
        if rest.startswith(("sr.", "norm.")):
            raise ValueError(f"{key}: PVT agent attention with sr_ratio > 1 (spatial reduction) has no "
                             "equivalent here; only sr_ratio == 1 state dicts convert")
    for suffix in ("weight", "bias"):
        qk, kvk = f"{prefix}q.{suffix}", f"{prefix}kv.{suffix}"
        if qk in state_dict and kvk in state_dict:
            out[f"qkv.{suffix}"] = torch.cat([state_dict[qk], state_dict[kvk]], dim=0)
        elif (qk in state_dict) != (kvk in state_dict):
            raise ValueError(f"found only one of {qk!r} and {kvk!r}; a PVT state dict has both")
    for key, val in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest.split(".")[0] in ("q", "kv"):
            continue
        out[rest] = val
    if "qkv.weight" not in out:
        raise ValueError("no q.weight/kv.weight found: is this a PVT-variant agent attention state dict?")
    return out

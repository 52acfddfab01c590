"""``AgentAttention``: a drop-in module, parameter-compatible with the authors' Agent-DeiT / Agent-PVT /
Agent-Swin attention (Han et al., ECCV 2024; ``LeapLabTHU/Agent-Attention``), running the fused op by default.

Token layout: x (B, P + h·w, C) with P = ``num_prefix_tokens`` leading tokens (1 for a DeiT class token,
0 for a pure grid as in PVT/Swin/HTNet) followed by an h x w grid in row-major order.

Host call conventions it accepts (``forward``): ``attn(x)`` (DeiT), ``attn(x, attn_mask=None, is_causal=False)``
(timm ``Block``), ``attn(x, mask=None)`` (Swin), ``attn(x, H, W)`` (PVT), ``attn(x, hw=(h, w))`` (HTNet),
``attn(x, context=c)`` (cross-attention). Converters from the original modules: ``agentattn.convert``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from agentattn.ops.agent_attention.naive import agent_attention_ref
from agentattn.ops.agent_attention.op import agent_attention

Tensor = torch.Tensor


def _positive_pair(x, name: str) -> tuple[int, int]:
    if isinstance(x, bool) or not isinstance(x, (int, tuple, list)):
        raise ValueError(f"{name} must be a positive int or an (h, w) pair of positive ints, got {x!r}")
    t = (x, x) if isinstance(x, int) else tuple(x)
    if len(t) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in t):
        raise ValueError(f"{name} must be a positive int or an (h, w) pair of positive ints, got {x!r}")
    if min(t) < 1:
        raise ValueError(f"{name} must be positive, got {x!r}")
    return t


def _agent_grid(agent_num) -> tuple[int, int]:
    if isinstance(agent_num, int) and not isinstance(agent_num, bool):
        if agent_num < 1:
            raise ValueError(f"agent_num must be >= 1 (the number of agent tokens), got {agent_num}")
        r = math.isqrt(agent_num)
        if r * r != agent_num:
            raise ValueError(
                f"agent_num={agent_num} is not a perfect square; pass an explicit agent grid such as "
                f"agent_num=({max(1, r)}, {math.ceil(agent_num / max(1, r))})"
            )
        return (r, r)
    return _positive_pair(agent_num, "agent_num")


def infer_grid(tokens: int, window: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) grid of ``tokens`` grid tokens for a module built for ``window``: the window itself, else
    the grid with the window's aspect ratio (e.g. 7 x 9 for a (14, 18) window), else a square; None when
    none fits (the caller must then say hw)."""
    wh, ww = window
    if tokens == wh * ww:
        return window
    g = math.gcd(wh, ww)
    rh, rw = wh // g, ww // g
    k = math.isqrt(tokens // (rh * rw)) if tokens % (rh * rw) == 0 else 0
    if k and (k * rh) * (k * rw) == tokens:
        return (k * rh, k * rw)
    r = math.isqrt(tokens)
    return (r, r) if r * r == tokens and r > 0 else None


class AgentAttention(nn.Module):
    """Agent attention with the authors' module parameters (names and shapes: the compatibility contract).

    Args:
        dim: channels C (divisible by ``num_heads``).
        num_heads: heads H.
        qkv_bias: bias in the q/k/v projections.
        attn_drop, proj_drop: dropout after each softmax / after ``proj``.
        agent_num: number of agents n, a perfect square, or an explicit agent grid (ah, aw).
        window: the token grid (h, w) (or an int for square grids) the biases are sized for.
        num_prefix_tokens: leading non-grid tokens (1 = class token, DeiT layout).
        fused: True (default) = the fused op; False = the reference composition (parity tests flip it on
            one instance; ``AGENTATTN_BACKEND=reference`` is the global way to run the reference everywhere).
            None means True.
        sr_ratio: PVT's spatial reduction of keys and values (a strided conv + LayerNorm, ``sr``/``norm``);
            with sr_ratio > 1 the projections are PVT's separate ``q`` and ``kv`` and the stage-1 row/column
            biases are sized for the reduced (h / sr, w / sr) key grid.
        context_dim: cross-attention: keys and values come from ``forward(x, context=c)``, c (B, M, context_dim)
            (e.g. 77 text tokens); projections ``q`` and ``kv``; no key-side position biases and no depthwise
            conv (the context has no grid).
        ignore_mask: accept and ignore a host's attention mask, as the authors' Agent-Swin does with the
            shifted-window mask. Default False: a mask is refused (agent attention has no query-key scores
            a mask could apply to).
        scale: the score scale, default head_dim ** -0.5 (detection Agent-PVT's ``scale`` exponent e gives
            head_dim ** e).
        dwc_kernel: kernel size of the depthwise conv ``dwc`` (odd; 3 in the classification models).
        bias_agent_grid: the agent grid the position biases are sized for, default ``agent_num``'s grid. When
            it differs (detection Agent-PVT's ``downstream_agent_shape``: agents pooled to another grid than
            the one trained), the biases are bilinearly interpolated over the agent grid, as there.

    Shapes: forward(x (B, P + h·w, C)) -> (B, P + h·w, C). The grid is the window, or (H, W) / ``hw`` when
    given (the position biases are then interpolated to it), or worked out from the token count
    (:func:`infer_grid`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        agent_num=49,
        window=14,
        num_prefix_tokens: int = 0,
        fused: bool | None = True,
        *,
        sr_ratio: int = 1,
        context_dim: int | None = None,
        ignore_mask: bool = False,
        scale: float | None = None,
        dwc_kernel: int = 3,
        bias_agent_grid=None,
    ):
        super().__init__()
        for name, val in (("dim", dim), ("num_heads", num_heads), ("sr_ratio", sr_ratio), ("dwc_kernel", dwc_kernel)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0 (1 for a class token), got {num_prefix_tokens!r}")
        if context_dim is not None and (not isinstance(context_dim, int) or context_dim < 1):
            raise ValueError(f"context_dim must be a positive int or None, got {context_dim!r}")
        if context_dim is not None and sr_ratio > 1:
            raise ValueError(
                "sr_ratio > 1 (PVT spatial reduction) and context_dim (cross-attention) exclude "
                "each other: keys come either from the reduced grid or from the context"
            )
        if bias_agent_grid is not None and num_prefix_tokens:
            raise ValueError(
                "bias_agent_grid (biases interpolated over the agent grid, detection Agent-PVT) needs "
                f"num_prefix_tokens=0, got {num_prefix_tokens}"
            )
        if sr_ratio > 1 and num_prefix_tokens:
            raise ValueError(
                f"sr_ratio={sr_ratio} reduces a pure grid (PVT); num_prefix_tokens must be 0, got {num_prefix_tokens}"
            )
        if dwc_kernel % 2 == 0:
            raise ValueError(f"dwc_kernel must be odd (the conv keeps the grid size), got {dwc_kernel}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5 if scale is None else float(scale)
        self.window = _positive_pair(window, "window")
        self.agent_grid = _agent_grid(agent_num)
        self.agent_num = self.agent_grid[0] * self.agent_grid[1]
        self.bias_agent_grid = self.agent_grid if bias_agent_grid is None else _agent_grid(bias_agent_grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.fused = fused
        self.sr_ratio = sr_ratio
        self.context_dim = context_dim
        self.ignore_mask = bool(ignore_mask)
        # the query grid for calls that give none, set by a host that knows it (agentattn.convert.timm_vit
        # sets it from the patch embedding's output for timm's dynamic_img_size); None = window / inferred
        self.grid_hint: tuple[int, int] | None = None
        wh, ww = self.window
        if sr_ratio > 1 and (wh < sr_ratio or ww < sr_ratio):
            raise ValueError(f"window={self.window} is smaller than sr_ratio={sr_ratio}: no key grid is left")
        H, n, P = num_heads, self.bias_agent_grid[0] * self.bias_agent_grid[1], num_prefix_tokens
        kh, kw = wh // sr_ratio, ww // sr_ratio  # the key grid the stage-1 row/column biases are sized for

        if sr_ratio == 1 and context_dim is None:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim or dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        if context_dim is None:
            self.dwc = nn.Conv2d(dim, dim, kernel_size=dwc_kernel, padding=dwc_kernel // 2, groups=dim)
            self.an_bias = nn.Parameter(torch.zeros(H, n, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(H, n, 7, 7))
        if context_dim is None:
            self.ah_bias = nn.Parameter(torch.zeros(1, H, n, kh, 1))
            self.aw_bias = nn.Parameter(torch.zeros(1, H, n, 1, kw))
        self.ha_bias = nn.Parameter(torch.zeros(1, H, wh, 1, n))
        self.wa_bias = nn.Parameter(torch.zeros(1, H, 1, ww, n))
        if P:
            if context_dim is None:
                self.ac_bias = nn.Parameter(torch.zeros(1, H, n, P))
            self.ca_bias = nn.Parameter(torch.zeros(1, H, P, n))
        for name, p in self.named_parameters(recurse=False):
            if name.endswith("_bias"):
                nn.init.trunc_normal_(p, std=0.02)
        self.pool = nn.AdaptiveAvgPool2d(output_size=self.agent_grid)

    @property
    def use_fused(self) -> bool:
        return True if self.fused is None else bool(self.fused)

    def extra_repr(self) -> str:
        extra = "".join(
            f", {k}={v}"
            for k, v in (
                ("sr_ratio", self.sr_ratio),
                ("context_dim", self.context_dim),
                ("ignore_mask", self.ignore_mask),
            )
            if v not in (1, None, False)
        )
        if self.bias_agent_grid != self.agent_grid:
            extra += f", bias_agent_grid={self.bias_agent_grid}"
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, agent_grid={self.agent_grid}, "
            f"window={self.window}, num_prefix_tokens={self.num_prefix_tokens}, fused={self.fused}{extra}"
        )

    # ------------------------------------------------------------------ biases
    def _resize_1d(self, p: Tensor, size: int, dim: int) -> Tensor:
        """Linear interpolation of a row/column bias along ``dim`` to ``size``."""
        if p.shape[dim] == size:
            return p
        moved = p.movedim(dim, -1)
        flat = moved.reshape(1, -1, moved.shape[-1])
        out = F.interpolate(flat, size=size, mode="linear", align_corners=False)
        return out.reshape(*moved.shape[:-1], size).movedim(-1, dim)

    def _resize_agents(self, b: Tensor) -> Tensor:
        """(1, H, T, n_bias) -> (1, H, T, n): bilinear over the agent grid (``bias_agent_grid`` -> ``agent_grid``),
        as detection Agent-PVT does for its ``downstream_agent_shape``; a no-op when the grids agree."""
        if self.bias_agent_grid == self.agent_grid:
            return b
        _, H, T, _ = b.shape
        g = b.reshape(H, T, *self.bias_agent_grid)
        return F.interpolate(g, size=self.agent_grid, mode="bilinear").reshape(1, H, T, self.agent_num)

    def position_biases(self, h: int, w: int, kv_hw: tuple[int, int] | None = None) -> tuple[Tensor | None, Tensor]:
        """Stage-1 bias (1, H, n, P + kh·kw) over the keys and stage-2 bias (1, H, P + h·w, n) over the
        queries, never per batch; (kh, kw) = ``kv_hw`` (the reduced key grid, sr_ratio > 1), default (h, w).
        Cross-attention has no stage-1 bias (None)."""
        H, n = self.num_heads, self.bias_agent_grid[0] * self.bias_agent_grid[1]
        b1 = None
        if self.context_dim is None:
            kh, kw = (h, w) if kv_hw is None else kv_hw
            b1 = F.interpolate(self.an_bias, size=(kh, kw), mode="bilinear").reshape(1, H, n, kh * kw)
            rows_cols = self._resize_1d(self.ah_bias, kh, 3) + self._resize_1d(self.aw_bias, kw, 4)
            b1 = b1 + rows_cols.reshape(1, H, n, kh * kw)
            b1 = self._resize_agents(b1.transpose(-2, -1)).transpose(-2, -1)
        b2 = F.interpolate(self.na_bias, size=(h, w), mode="bilinear").reshape(1, H, n, h * w).transpose(-2, -1)
        b2 = b2 + (self._resize_1d(self.ha_bias, h, 2) + self._resize_1d(self.wa_bias, w, 3)).reshape(1, H, h * w, n)
        b2 = self._resize_agents(b2)
        if self.num_prefix_tokens:
            if b1 is not None:
                b1 = torch.cat([self.ac_bias, b1], dim=-1)
            b2 = torch.cat([self.ca_bias, b2], dim=-2)
        return b1, b2

    # ------------------------------------------------------------------ forward
    def _grid(self, x: Tensor, H, W, hw) -> tuple[int, int]:
        """The query grid from the host's arguments or the token count (module docstring)."""
        if isinstance(H, (tuple, list)) and W is None and hw is None:
            hw, H = H, None  # forward(x, (h, w)): hw given positionally
        if H is not None or W is not None:
            if H is None or W is None or hw is not None:
                raise ValueError("pass the grid either as forward(x, H, W) (PVT) or as hw=(h, w), not both or half")
            hw = (int(H), int(W))
        P, N = self.num_prefix_tokens, x.shape[1]
        if hw is None:
            hw = self.grid_hint
        if hw is not None:
            h, w = _positive_pair(tuple(int(v) for v in hw), "hw")
        else:
            grid = infer_grid(N - P, self.window) if N > P else None
            if grid is None:
                raise ValueError(
                    f"x has {N} tokens: num_prefix_tokens={P} plus no grid of the window's shape "
                    f"{self.window} or a square; pass hw=(h, w) for inputs of another size"
                )
            h, w = grid
        if N != P + h * w:
            raise ValueError(
                f"x has {N} tokens but the layout needs num_prefix_tokens + h*w = {P} + {h}*{w} = {P + h * w}; "
                f"pass hw=(h, w) for inputs of another size"
            )
        return h, w

    def _check_mask(self, mask, attn_mask, is_causal) -> None:
        if is_causal:
            raise ValueError(
                "AgentAttention cannot be causal: every query reads the agents, which pool the whole "
                "grid; use softmax attention for causal masking"
            )
        m = mask if mask is not None else attn_mask
        if m is not None and not self.ignore_mask:
            raise ValueError(
                "AgentAttention cannot apply an attention mask: agent attention has no query-key scores to mask. "
                "The authors' Agent-Swin ignores its shifted-window mask; build the module with ignore_mask=True "
                "(agentattn.convert does for Agent-Swin) to do the same, or drop the mask"
            )

    def forward(
        self,
        x: Tensor,
        H: int | tuple | None = None,
        W: int | None = None,
        *,
        hw: tuple[int, int] | None = None,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """x (B, P + h·w, C) -> (B, P + h·w, C). ``H, W`` (PVT) or ``hw``: the grid; ``context``
        (B, M, context_dim): the keys' and values' tokens (cross-attention modules only); ``mask`` (Swin),
        ``attn_mask`` / ``is_causal`` (timm): refused unless ``ignore_mask`` (class docstring)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, tokens, C={self.dim}), got {tuple(x.shape)}")
        self._check_mask(mask, attn_mask, is_causal)
        B, N, C = x.shape
        h, w = self._grid(x, H, W, hw)
        kv_hw = None
        if self.context_dim is not None:
            if context is None or context.dim() != 3 or context.shape[0] != B or context.shape[-1] != self.context_dim:
                raise ValueError(
                    f"a cross-attention AgentAttention needs context (B={B}, M, {self.context_dim}), "
                    f"got {None if context is None else tuple(context.shape)}"
                )
            q = self.q(x)
            k, v = self.kv(context).reshape(B, context.shape[1], 2, C).unbind(2)
        elif context is not None:
            raise ValueError("context is for cross-attention modules: build AgentAttention(..., context_dim=...)")
        elif self.sr_ratio > 1:
            q = self.q(x)
            r = self.sr_ratio
            if h % r or w % r:
                raise ValueError(f"the grid ({h}, {w}) must be divisible by sr_ratio={r} (PVT's spatial reduction)")
            kv_hw = (h // r, w // r)
            x_ = self.sr(x.transpose(1, 2).reshape(B, C, h, w)).reshape(B, C, -1).transpose(1, 2)
            k, v = self.kv(self.norm(x_)).reshape(B, -1, 2, C).unbind(2)  # each (B, M, C)
        else:
            q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)  # each (B, N, C)
        return self.proj_drop(self.proj(self.attend(q, k, v, (h, w), kv_hw)))

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, hw: tuple[int, int], kv_hw: tuple[int, int] | None = None
    ) -> Tensor:
        """The attention between the projections: q (B, P + h·w, C), k and v (B, M, C) -> (B, P + h·w, C)
        before ``proj``: agents pooled from q's grid, the op with the position biases, plus the depthwise
        conv of v (upsampled from ``kv_hw`` to ``hw`` when the keys are a reduced grid; absent for
        cross-attention). Host adapters with projections of their own (Agent-CSwin) call it directly."""
        (h, w), (B, N, C) = hw, q.shape
        P, nh, hd = self.num_prefix_tokens, self.num_heads, self.head_dim
        grid_q = q[:, P:, :].reshape(B, h, w, C).permute(0, 3, 1, 2)  # (B, C, h, w)
        agents = self.pool(grid_q).reshape(B, C, -1).permute(0, 2, 1)  # (B, n, C)
        heads = lambda t: t.reshape(B, t.shape[1], nh, hd).permute(0, 2, 1, 3)  # noqa: E731 (B, H, *, hd)
        qh, kh, vh, ah = heads(q), heads(k), heads(v), heads(agents)
        b1, b2 = self.position_biases(h, w, kv_hw)
        p_drop = self.attn_drop.p if self.training else 0.0
        if self.use_fused and p_drop == 0.0:
            out = agent_attention(qh, kh, vh, ah, b1, b2, self.scale)
        else:  # reference composition (also the only path that applies attention dropout)
            out = agent_attention_ref(qh, kh, vh, ah, b1, b2, self.scale, attn_drop=p_drop, training=self.training)
        out = out.transpose(1, 2).reshape(B, N, C)
        if self.context_dim is None:
            kh_, kw_ = (h, w) if kv_hw is None else kv_hw
            v_grid = v[:, P:, :].reshape(B, kh_, kw_, C).permute(0, 3, 1, 2)
            if kv_hw is not None:
                v_grid = F.interpolate(v_grid, size=(h, w), mode="bilinear")  # PVT: back to the query grid
            local = self.dwc(v_grid).permute(0, 2, 3, 1).reshape(B, h * w, C)
            out = torch.cat([out[:, :P], out[:, P:] + local], dim=1) if P else out + local
        return out


def convert_pvt_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """Moved to :func:`agentattn.convert.pvt_state_dict` (kept here for existing imports)."""
    from agentattn.convert import pvt_state_dict

    return pvt_state_dict(state_dict, prefix)

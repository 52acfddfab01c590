"""Converters to ``agentattn``: the authors' Agent-Attention modules (``LeapLabTHU/Agent-Attention``) and timm
ViT/DeiT attention, each into modules running the fused op, with the same function and strict state dict loading.

Whole models, in place::

    import agentattn.convert as cv
    cv.swap(model)                       # every Agent-DeiT/PVT/Swin/CSwin attention of an authors' model
    cv.timm_vit(model, agent_num=49)     # every attention of a timm ViT/DeiT becomes agent attention
    cv.agentsd(model, k_scale2=0.3, k_shortcut=0.075)   # AgentSD's patched U-Net attention (ldm / SD)

One module: ``from_original(module) -> AgentAttention`` (or the Agent-CSwin adapter); one checkpoint:
``deit_state_dict`` / ``pvt_state_dict`` / ``swin_state_dict`` / ``cswin_state_dict`` map an original module's
state dict to ours (load with ``strict=True``). Whatever a converter cannot represent it refuses with a
``ValueError`` naming the module and the reason; nothing is converted approximately.

What each original becomes (tests/agentattn/test_convert_*.py compare outputs and all gradients in fp64):

- Agent-DeiT ``AgentAttention`` (agent_deit.py) -> ``AgentAttention(num_prefix_tokens=1)``, same names.
- Agent-PVT ``AgentAttention`` (agent_pvt.py): sr_ratio 1 -> ``AgentAttention`` (``q`` + ``kv`` -> ``qkv``);
  sr_ratio > 1 -> ``AgentAttention(sr_ratio=r)``, same names (``q``, ``kv``, ``sr``, ``norm``).
- detection Agent-PVT (mmdet backbones/agent_pvt.py, ``downstream_agent_shape``) ->
  ``AgentAttention(bias_agent_grid=..., scale=..., dwc_kernel=...)``; its sr_ratio > 1 is refused (the
  original asserts sr_ratio == 1 in forward and cannot run it).
- Agent-Swin ``AgentAttention`` (agent_swin.py) -> ``AgentAttention(ignore_mask=True)`` (the original ignores
  the shifted-window mask too).
- Agent-CSwin ``AgentAttention`` (agent_cswin.py) -> :class:`CSWinAgentAttention` (``get_v`` -> ``dwc``;
  forward(qkv) as there).
- AgentSD (agentsd/patch.py) -> :class:`AgentSDAttention` (two scales, ``k_scale2``, and ``k_shortcut``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from agentattn.modules.agent_attention import AgentAttention
from agentattn.ops.agent_attention.op import agent_attention

Tensor = torch.Tensor

__all__ = [
    "deit_state_dict",
    "pvt_state_dict",
    "swin_state_dict",
    "cswin_state_dict",
    "from_original",
    "swap",
    "timm_vit",
    "agentsd",
    "CSWinAgentAttention",
    "AgentSDAttention",
]


# ------------------------------------------------------------------------------------ state dicts
def _strip(state_dict: dict, prefix: str) -> dict:
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"no keys start with prefix {prefix!r}")
    return out


def deit_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """Agent-DeiT ``AgentAttention`` state dict (keys under ``prefix``) -> ours: the names are the same."""
    sd = _strip(state_dict, prefix)
    if "qkv.weight" not in sd or "ac_bias" not in sd:
        raise ValueError(f"{prefix or 'state dict'}: no qkv.weight / ac_bias: not an Agent-DeiT attention")
    return sd


def swin_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """Agent-Swin ``AgentAttention`` state dict -> ours: the names are the same."""
    sd = _strip(state_dict, prefix)
    if "qkv.weight" not in sd or "an_bias" not in sd:
        raise ValueError(f"{prefix or 'state dict'}: no qkv.weight / an_bias: not an Agent-Swin attention")
    return sd


def pvt_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """Agent-PVT ``AgentAttention`` state dict (classification or detection) -> ours.

    sr_ratio == 1 (no ``sr``/``norm`` keys): the separate ``q`` and ``kv`` linears are concatenated into one
    ``qkv``; load into ``AgentAttention(dim, heads, qkv_bias=..., agent_num=..., window=(H, W))``.
    sr_ratio > 1: the names are kept; load into ``AgentAttention(..., sr_ratio=r)``."""
    sd = _strip(state_dict, prefix)
    if "qkv.weight" in sd and "q.weight" not in sd and "kv.weight" not in sd:
        return sd  # already ours
    if "sr.weight" in sd:
        if "q.weight" not in sd or "kv.weight" not in sd:
            raise ValueError(f"{prefix or 'state dict'}: sr_ratio > 1 needs q.weight and kv.weight")
        return sd
    out = {k: v for k, v in sd.items() if k.split(".")[0] not in ("q", "kv")}
    for suffix in ("weight", "bias"):
        qk, kvk = f"q.{suffix}", f"kv.{suffix}"
        if (qk in sd) != (kvk in sd):
            raise ValueError(f"found only one of {prefix + qk!r} and {prefix + kvk!r}; a PVT state dict has both")
        if qk in sd:
            out[f"qkv.{suffix}"] = torch.cat([sd[qk], sd[kvk]], dim=0)
    if "qkv.weight" not in out:
        raise ValueError("no q.weight/kv.weight found: is this an Agent-PVT attention state dict?")
    return out


def cswin_state_dict(state_dict: dict, prefix: str = "") -> dict:
    """Agent-CSwin ``AgentAttention`` state dict -> :class:`CSWinAgentAttention`'s: ``get_v`` -> ``dwc``."""
    sd = _strip(state_dict, prefix)
    if "get_v.weight" not in sd:
        raise ValueError(f"{prefix or 'state dict'}: no get_v.weight: not an Agent-CSwin attention")
    return {("dwc" + k[len("get_v") :] if k.startswith("get_v.") else k): v for k, v in sd.items()}


# ------------------------------------------------------------------------------------ module converters
def _kind(m: nn.Module) -> str | None:
    """Which original agent attention ``m`` is, by its attributes (no import of the authors' code)."""
    if isinstance(m, (AgentAttention, CSWinAgentAttention, AgentSDAttention)):
        return None
    has = lambda *names: all(hasattr(m, a) for a in names)  # noqa: E731
    if not has("an_bias", "na_bias", "ah_bias", "pool", "agent_num"):
        return None
    if has("get_v", "H_sp", "W_sp"):
        return "cswin"
    if has("q", "kv", "sr_ratio", "window_size"):
        return "pvt_det" if has("downstream_agent_shape") else "pvt"
    if has("qkv", "ac_bias", "window"):
        return "deit"
    if has("qkv", "window_size"):
        return "swin"
    return None


def _square_agents(name: str, agent_num: int) -> int:
    r = math.isqrt(agent_num)
    if r * r != agent_num:
        raise ValueError(
            f"{name}: agent_num={agent_num} is not a perfect square: the original pools to "
            f"int(sqrt({agent_num}))² = {r * r} agents and cannot run either"
        )
    return agent_num


def _load(ours: nn.Module, sd: dict, name: str, like: nn.Module) -> nn.Module:
    ref = next(iter(like.parameters()))
    ours.to(device=ref.device, dtype=ref.dtype)
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{name}: state dict does not map one to one (missing {missing}, unexpected {unexpected})")
    ours.train(like.training)
    return ours


def from_original(module: nn.Module, name: str = "module") -> nn.Module:
    """One of the authors' agent attention modules -> ours with the same function and the weights loaded
    strictly (module docstring's table). ``name`` appears in the error messages."""
    kind = _kind(module)
    if kind is None:
        raise ValueError(
            f"{name} ({type(module).__name__}) is not an Agent-Attention module known here "
            "(Agent-DeiT, Agent-PVT, detection Agent-PVT, Agent-Swin, Agent-CSwin)"
        )
    m = module
    H = m.num_heads
    drops = dict(attn_drop=m.attn_drop.p, proj_drop=m.proj_drop.p if hasattr(m, "proj_drop") else 0.0)
    sd = m.state_dict()
    if kind == "deit":
        n = _square_agents(name, m.agent_num)
        ours = AgentAttention(
            m.dim, H, qkv_bias=m.qkv.bias is not None, agent_num=n, window=m.window, num_prefix_tokens=1, **drops
        )
        ours.scale = m.scale
        return _load(ours, deit_state_dict(sd), name, m)
    if kind == "swin":
        n = _square_agents(name, m.agent_num)
        ws = tuple(m.window_size)
        if ws[0] != ws[1]:
            raise ValueError(
                f"{name}: window_size={ws} is not square: the original takes h = w = sqrt(tokens) "
                "and cannot run such windows"
            )
        ours = AgentAttention(
            m.dim, H, qkv_bias=m.qkv.bias is not None, agent_num=n, window=ws, ignore_mask=True, **drops
        )
        ours.scale = m.scale
        return _load(ours, swin_state_dict(sd), name, m)
    if kind in ("pvt", "pvt_det"):
        n = _square_agents(name, m.agent_num)
        extra = {}
        if kind == "pvt_det":
            if m.sr_ratio > 1:
                raise ValueError(
                    f"{name}: detection Agent-PVT with sr_ratio={m.sr_ratio}: its forward asserts "
                    "sr_ratio == 1 (the original cannot run it), so there is nothing to reproduce"
                )
            extra = dict(
                agent_num=tuple(m.downstream_agent_shape), bias_agent_grid=n, dwc_kernel=m.kernel_size, scale=m.scale
            )
        ours = AgentAttention(
            m.dim,
            H,
            qkv_bias=m.q.bias is not None,
            agent_num=extra.pop("agent_num", n),
            window=tuple(m.window_size),
            sr_ratio=m.sr_ratio,
            **extra,
            **drops,
        )
        ours.scale = m.scale
        return _load(ours, pvt_state_dict(sd), name, m)
    # cswin
    n = _square_agents(name, m.agent_num)
    ours = CSWinAgentAttention(m.dim, m.resolution, (m.H_sp, m.W_sp), H, agent_num=n, attn_drop=m.attn_drop.p)
    ours.scale = m.scale
    return _load(ours, cswin_state_dict(sd), name, m)


def swap(model: nn.Module) -> list[str]:
    """Replace, in place, every authors' agent attention module in ``model`` by ours (:func:`from_original`);
    returns the dotted names replaced. A module it cannot represent raises before anything is replaced."""
    found = [(name, mod) for name, mod in model.named_modules() if name and _kind(mod) is not None]
    new = [(name, from_original(mod, name)) for name, mod in found]
    for name, mod in new:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, mod)
    return [name for name, _ in new]


# ---------------------------------------------------------------------------------------- timm ViT
def timm_vit(model: nn.Module, agent_num=49, layers=None, fused: bool | None = True) -> list[str]:
    """Swap every attention of a timm ``VisionTransformer`` (ViT, DeiT; ``model.blocks[i].attn``) for
    ``AgentAttention``, in place, as the authors build Agent-DeiT from DeiT: q/k/v/proj weights carried over,
    the agent parameters (position biases: truncated normal, std 0.02; ``dwc``: PyTorch's default conv init)
    initialised as theirs are. ``layers``: block indices to swap (default all; Agent-DeiT-B swaps the first 4).

    The grid is the patch embedding's; with ``dynamic_img_size`` a forward hook on ``model.patch_embed`` hands
    each swapped attention the grid of the current input (any size, square or not). Refused, with the reason:
    q/k normalisation, a scale norm, gated attention, a head dim other than dim / heads, and a projection
    without bias (agent attention has no such parameters). Returns the names of the swapped modules."""
    pe = getattr(model, "patch_embed", None)
    blocks = getattr(model, "blocks", None)
    if pe is None or blocks is None or not hasattr(pe, "grid_size"):
        raise ValueError("timm_vit needs a timm VisionTransformer (patch_embed with grid_size, blocks)")
    grid = tuple(int(g) for g in pe.grid_size)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    idx = range(len(blocks)) if layers is None else list(layers)
    plan = []
    for i in idx:
        attn = blocks[i].attn
        name = f"blocks.{i}.attn"
        if isinstance(attn, AgentAttention):
            continue  # converted already: keep its (maybe trained) agent parameters
        for what, bad in (
            ("q_norm", not isinstance(getattr(attn, "q_norm", nn.Identity()), nn.Identity)),
            ("k_norm", not isinstance(getattr(attn, "k_norm", nn.Identity()), nn.Identity)),
            ("norm (scale_norm)", not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity)),
            ("gate", getattr(attn, "gate", None) is not None),
        ):
            if bad:
                raise ValueError(f"{name}: {what} has no counterpart in agent attention; build the model without it")
        if not all(isinstance(getattr(attn, lin, None), nn.Linear) for lin in ("qkv", "proj")):
            raise ValueError(f"{name} ({type(attn).__name__}) has no qkv/proj linears: not a timm Attention")
        dim = attn.qkv.in_features
        heads = attn.num_heads
        if attn.qkv.out_features != 3 * dim or heads * getattr(attn, "head_dim", dim // heads) != dim:
            raise ValueError(
                f"{name}: attention width {attn.qkv.out_features // 3} != embed dim {dim} "
                "(attn_head_dim): agent attention keeps the width"
            )
        if attn.proj.bias is None or attn.proj.out_features != dim:
            raise ValueError(f"{name}: proj must be Linear({dim}, {dim}) with bias (proj_bias=False is not supported)")
        plan.append((i, name, attn, dim, heads))
    names = []
    swapped = []
    for i, name, attn, dim, heads in plan:
        ref = attn.qkv.weight
        ours = AgentAttention(
            dim,
            heads,
            qkv_bias=attn.qkv.bias is not None,
            attn_drop=attn.attn_drop.p,
            proj_drop=attn.proj_drop.p,
            agent_num=agent_num,
            window=grid,
            num_prefix_tokens=prefix,
            fused=fused,
        ).to(device=ref.device, dtype=ref.dtype)
        ours.scale = float(attn.scale)
        with torch.no_grad():
            for lin in ("qkv", "proj"):
                getattr(ours, lin).weight.copy_(getattr(attn, lin).weight)
                if getattr(attn, lin).bias is not None:
                    getattr(ours, lin).bias.copy_(getattr(attn, lin).bias)
        ours.train(attn.training)
        blocks[i].attn = ours
        names.append(name)
        swapped.append(ours)
    if swapped and getattr(model, "dynamic_img_size", False):

        def set_grid(_mod, _inp, out, swapped=swapped):
            hw = tuple(out.shape[1:3]) if out.dim() == 4 else None  # dynamic_img_size: NHWC patch grid
            for a in swapped:
                a.grid_hint = hw

        pe.register_forward_hook(set_grid)
    return names


# ---------------------------------------------------------------------------------------- Agent-CSwin
def _img2windows(img: Tensor, h_sp: int, w_sp: int) -> Tensor:
    B, C, H, W = img.shape
    x = img.view(B, C, H // h_sp, h_sp, W // w_sp, w_sp).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, h_sp * w_sp, C)


def _windows2img(x: Tensor, h_sp: int, w_sp: int, H: int, W: int) -> Tensor:
    B = x.shape[0] // (H * W // (h_sp * w_sp))
    x = x.view(B, H // h_sp, W // w_sp, h_sp, w_sp, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


class CSWinAgentAttention(AgentAttention):
    """Agent-CSwin's agent attention branch on the fused op: ``forward(qkv)`` with qkv (3, B, L, C) projected
    by the host block (as the original), L = resolution² tokens cut into (H_sp, W_sp) stripes; per stripe,
    agent attention over the stripe grid plus the depthwise conv (the original's ``get_v``, here ``dwc``) of
    v. No projections of its own (the block has them). Shapes: (3, B, L, C) -> (B, L, C)."""

    def __init__(
        self,
        dim: int,
        resolution: int,
        stripe: tuple[int, int],
        num_heads: int,
        agent_num=49,
        attn_drop: float = 0.0,
        fused: bool | None = True,
    ):
        super().__init__(dim, num_heads, agent_num=agent_num, window=stripe, attn_drop=attn_drop, fused=fused)
        del self.qkv, self.proj, self.proj_drop
        self.resolution = int(resolution)
        self.stripe = tuple(stripe)
        if self.resolution % self.stripe[0] or self.resolution % self.stripe[1]:
            raise ValueError(f"resolution {resolution} must be divisible by the stripe {stripe}")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", resolution={self.resolution}, stripe={self.stripe}"

    def forward(self, qkv: Tensor) -> Tensor:
        q, k, v = qkv[0], qkv[1], qkv[2]
        B, L, C = q.shape
        R = self.resolution
        if L != R * R or C != self.dim:
            raise ValueError(f"qkv must be (3, B, {R}*{R}, {self.dim}), got {tuple(qkv.shape)}")
        hs, ws = self.stripe
        win = lambda t: _img2windows(t.transpose(-2, -1).reshape(B, C, R, R), hs, ws)  # noqa: E731
        out = self.attend(win(q), win(k), win(v), (hs, ws))
        return _windows2img(out, hs, ws, R, R).reshape(B, -1, C)


# ------------------------------------------------------------------------------------------- AgentSD
class AgentSDAttention(nn.Module):
    """AgentSD's agent attention (agentsd/patch.py ``make_agent_attn``) on the fused op, around an ldm / SD
    ``CrossAttention`` (``to_q``, ``to_k``, ``to_v``, ``to_out``, ``heads``, ``scale``), whose modules it
    shares. ``forward(x, agent=None, context=None, mask=None)`` as there: with agent tokens (B, n, C) (from
    the host's token merging) and fewer than half as many as x's tokens::

        out = softmax(s^k_scale2 · Q Aᵀ) softmax(s · A Kᵀ) V + k_shortcut · V,   A = to_q(agent)

    else plain softmax attention (as the original; a boolean ``mask`` applies there). The original prints
    and ignores a mask on the agent path; here it is an error. Shapes: x (B, N, C), context (B, M, Cc)."""

    def __init__(self, attn: nn.Module, k_scale2: float = 0.3, k_shortcut: float = 0.075, fused: bool | None = True):
        super().__init__()
        for a in ("to_q", "to_k", "to_v", "to_out", "heads", "scale"):
            if not hasattr(attn, a):
                raise ValueError(f"AgentSDAttention wraps an ldm/SD CrossAttention; {type(attn).__name__} has no {a}")
        self.to_q, self.to_k, self.to_v, self.to_out = attn.to_q, attn.to_k, attn.to_v, attn.to_out
        self.heads, self.scale = attn.heads, attn.scale
        self.k_scale2, self.k_shortcut, self.fused = float(k_scale2), float(k_shortcut), fused

    def extra_repr(self) -> str:
        return f"heads={self.heads}, k_scale2={self.k_scale2}, k_shortcut={self.k_shortcut}, fused={self.fused}"

    def forward(
        self, x: Tensor, agent: Tensor | None = None, context: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        h = self.heads
        ctx = x if context is None else context
        use_agents = agent is not None and agent.shape[1] * 2 < x.shape[1]
        if use_agents and mask is not None:
            raise ValueError(
                "AgentSDAttention: a mask cannot apply to the agent path (the original prints "
                "'Mask not supported yet!' and ignores it); drop the mask"
            )
        q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
        B, N, C = q.shape
        heads = lambda t: t.reshape(B, t.shape[1], h, C // h).transpose(1, 2)  # noqa: E731 (B, h, *, d)
        if use_agents:
            if self.k_shortcut and k.shape[1] != N:
                raise ValueError(
                    f"k_shortcut={self.k_shortcut} adds V to the output: it needs as many keys as "
                    f"queries, got {k.shape[1]} context tokens for {N} (the original fails too)"
                )
            qh, kh, vh, ah = heads(q), heads(k), heads(v), heads(self.to_q(agent))
            out = agent_attention(
                qh,
                kh,
                vh,
                ah,
                scale=self.scale,
                scale_query=self.scale**self.k_scale2,
                backend=None if self.fused in (None, True) else "reference",
            )
            if self.k_shortcut:
                out = out + vh * self.k_shortcut
        else:
            qh, kh, vh = heads(q), heads(k), heads(v)
            sim = (qh @ kh.transpose(-2, -1)) * self.scale
            if mask is not None:
                m = mask.reshape(B, 1, 1, -1)
                sim = sim.masked_fill(~m, -torch.finfo(sim.dtype).max)
            out = sim.softmax(dim=-1) @ vh
        return self.to_out(out.transpose(1, 2).reshape(B, N, C))


def agentsd(model: nn.Module, k_scale2: float = 0.3, k_shortcut: float = 0.075) -> list[str]:
    """Wrap ``attn1`` and ``attn2`` of every ``BasicTransformerBlock`` of an ldm / SD U-Net in
    :class:`AgentSDAttention`, in place, as AgentSD's ``apply_patch`` patches them (the token merging that
    feeds ``agent`` stays the host's). Returns the names wrapped."""
    names = []
    for name, mod in list(model.named_modules()):
        if type(mod).__name__ != "BasicTransformerBlock":
            continue
        for a in ("attn1", "attn2"):
            sub = getattr(mod, a, None)
            if sub is not None and not isinstance(sub, AgentSDAttention):
                setattr(mod, a, AgentSDAttention(sub, k_scale2, k_shortcut))
                names.append(f"{name}.{a}" if name else a)
    return names

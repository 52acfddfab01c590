"""HTNet (Wang et al., Neurocomputing 2024): a NesT-style hierarchical transformer, reproducing the released
``wangzhifengharrison/HTNet`` ``Model.py`` and extending it per level with LAPE, agent attention and
removable attention branches.

    x (B, 3, S, S)  channels u, v, strain (whole face, or four facial-region windows tiled 2x2)
    -> patch_embed   p x p patches -> (B, D, S/p, S/p) [+ LAPE]     (= rearrange + 1x1 conv of the release)
    -> levels[i]     (B, C, H, H) [+ LAPE] -> blockify: b_i x b_i blocks as tokens (B·b_i², (H/b_i)², C)
                     -> [+ per-position scalar] -> depth_i Blocks -> deblockify to (B, C, H, H)
                     -> Aggregate (conv 3x3 C->2C, LN, maxpool 3/2/1) except after the last
    -> forward_head  channel LN -> spatial mean -> Linear -> (B, num_classes)

Blocks per side at level i default to the release's 2^(L-1-i); the map side halves (rounding up) per level.
Reading order: ``HTNetConfig`` -> ``HTNetLevel`` -> ``HTNet``. Registered variants: ``mer.models.registry``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from einops import rearrange

from agentattn import AgentAttention, FlowPatchEmbed
from mer.models.layers import Aggregate, Block, LayerNorm2d, SoftmaxAttention, set_attention_fused

Tensor = torch.Tensor

POS_KINDS = ("block_scalar", "lape")  # a level's `pos`: one of these, both joined by '+', or 'none'
ATTN_KINDS = ("softmax", "agent", "none")
LAYOUTS = ("face", "regions")


def _per_level(value, levels: int, name: str) -> tuple:
    """An int/str (same for every level) or a sequence with one entry per level -> tuple of length L."""
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise ValueError(
                f"{name} has {len(value)} entries but num_hierarchies={levels}: give one per level or a single value"
            )
        return tuple(value)
    return (value,) * levels


def parse_pos(pos: str) -> frozenset:
    """'block_scalar' | 'lape' | 'lape+block_scalar' | 'none' -> the set of position embeddings."""
    parts = frozenset() if pos == "none" else frozenset(p.strip() for p in str(pos).split("+"))
    bad = parts - set(POS_KINDS)
    if bad or not (parts or pos == "none"):
        raise ValueError(f"position embedding {pos!r}: use 'block_scalar', 'lape', 'lape+block_scalar' or 'none'")
    return parts


@dataclass
class HTNetConfig:
    """Every HTNet option. Per-level options take one value or a tuple with one entry per level.

    The released model is ``image_size=28, patch_size=7, dim=256, heads=3, num_hierarchies=3,
    block_repeats=(2, 2, 10), num_classes=3`` with the defaults below (``pos='block_scalar'``,
    ``attn='softmax'``, ``dim_head=None``).
    """

    image_size: int = 28  # input side S (square inputs, as released)
    patch_size: int = 2  # p: the token map is S/p x S/p
    num_classes: int = 3  # negative / positive / surprise (MEGC2019 composite)
    dim: int = 32  # channels of level 0; doubles per level
    heads: int = 2  # heads of level 0; doubles per level
    num_hierarchies: int = 2  # L levels
    block_repeats: int | tuple = 2  # transformer blocks per level
    mlp_mult: int = 4  # feed-forward width multiplier
    channels: int = 3  # input channels (u, v, strain)
    dim_head: int | None = None  # per-head width; None = dim // heads as released (inner = dim_head·heads)
    dropout: float = 0.0  # attention-probability, projection and feed-forward dropout
    pos: str | tuple = "block_scalar"  # per level: 'block_scalar' | 'lape' | 'lape+block_scalar' | 'none'
    attn: str | tuple = "softmax"  # per level: 'softmax' | 'agent' | 'none' (attention removed)
    agent_num: int | tuple = 9  # per level: agents per block (a perfect square) for attn='agent'
    blocks: int | tuple | None = None  # per level: blocks per side; None = 2^(L-1-i) as released
    layout: str = "face"  # 'face' or 'regions' (2x2 tiled windows: no level-0 block may straddle two)
    fused: bool | None = None  # attention fast path (SDPA / fused agent op); None = each module's default

    def __post_init__(self):
        L = self.num_hierarchies
        if L < 1:
            raise ValueError(f"num_hierarchies must be >= 1, got {L}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for kind in _per_level(self.attn, L, "attn"):
            if kind not in ATTN_KINDS:
                raise ValueError(f"attn must be one of {ATTN_KINDS} (per level), got {kind!r}")
        for p in _per_level(self.pos, L, "pos"):
            parse_pos(p)
        _per_level(self.block_repeats, L, "block_repeats")
        _per_level(self.agent_num, L, "agent_num")
        if self.blocks is not None:
            _per_level(self.blocks, L, "blocks")

    # --- derived per-level quantities --------------------------------------------------------------
    def level(self, name: str) -> tuple:
        """A per-level option as a tuple of length L."""
        return _per_level(getattr(self, name), self.num_hierarchies, name)

    def level_shapes(self) -> list[dict]:
        """Per level: dim, heads, map side, blocks per side, block side, depth; raises a ``ValueError``
        when a level's block grid does not divide its feature map."""
        L, side = self.num_hierarchies, self.image_size // self.patch_size
        blocks = self.level("blocks") if self.blocks is not None else tuple(2 ** (L - 1 - i) for i in range(L))
        out = []
        for i in range(L):
            b = int(blocks[i])
            if b < 1 or side % b:
                raise ValueError(
                    f"level {i}: the {side}x{side} feature map cannot be split into {b}x{b} blocks "
                    f"(image_size={self.image_size}, patch_size={self.patch_size}, num_hierarchies={L}; "
                    f"each level halves the map rounding up). Choose image_size/patch_size so that "
                    f"{side} is divisible by {b}, fewer hierarchies, or pass blocks=(...) per level."
                )
            out.append(
                dict(
                    level=i,
                    dim=self.dim * 2**i,
                    heads=self.heads * 2**i,
                    side=side,
                    blocks=b,
                    block_side=side // b,
                    depth=int(self.level("block_repeats")[i]),
                )
            )
            side = math.ceil(side / 2)
        if self.layout == "regions" and (out[0]["side"] % 2 or out[0]["blocks"] % 2):
            raise ValueError(
                f"layout='regions' tiles four region windows 2x2: level 0 needs an even block grid on an even "
                f"map so no block straddles two regions, got {out[0]['blocks']}x{out[0]['blocks']} blocks on a "
                f"{out[0]['side']}x{out[0]['side']} map; use layout='face' or another blocks/patch_size."
            )
        return out

    def to_dict(self) -> dict:
        return asdict(self)


class HTNetLevel(nn.Module):
    """One level: [+ LAPE] -> blockify -> [+ block scalar] -> blocks -> deblockify -> downsample.
    (B, C, H, H) -> (B, C_next, ceil(H/2), ceil(H/2)) (or (B, C, H, H) for the last level)."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None,
        heads: int,
        side: int,
        blocks: int,
        depth: int,
        pos: frozenset,
        attn: str,
        agent_num: int,
        mlp_mult: int,
        dim_head: int | None,
        dropout: float,
        fused: bool | None,
        lape_here: bool,
    ):
        super().__init__()
        self.side, self.num_blocks, self.block_side = side, blocks, side // blocks
        tokens = self.block_side**2
        self.lape = nn.Parameter(torch.zeros(dim, side, side)) if lape_here else None
        if self.lape is not None:
            nn.init.trunc_normal_(self.lape, std=0.02)
        self.pos_emb = nn.Parameter(torch.randn(tokens)) if "block_scalar" in pos else None
        if attn == "agent" and agent_num > tokens:
            raise ValueError(
                f"agent_num={agent_num} exceeds the {tokens} tokens of a "
                f"{self.block_side}x{self.block_side} block: use fewer agents"
            )

        def make_attn():
            if attn == "softmax":
                return SoftmaxAttention(dim, heads, dim_head, dropout, fused=True if fused is None else fused)
            if attn == "agent":
                return AgentAttention(
                    dim,
                    num_heads=heads,
                    qkv_bias=False,
                    attn_drop=dropout,
                    proj_drop=dropout,
                    agent_num=agent_num,
                    window=(self.block_side, self.block_side),
                    num_prefix_tokens=0,
                    fused=fused,
                )
            return None

        self.blocks = nn.ModuleList([Block(dim, make_attn(), mlp_mult, dropout) for _ in range(depth)])
        self.downsample = Aggregate(dim, dim_out) if dim_out is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.side, self.side):
            raise ValueError(
                f"level expects a {self.side}x{self.side} map, got {tuple(x.shape[-2:])}: build the "
                f"model for this image_size"
            )
        if self.lape is not None:
            x = x + self.lape
        b, bs = self.num_blocks, self.block_side
        x = rearrange(x, "b c (b1 h) (b2 w) -> (b b1 b2) (h w) c", b1=b, b2=b)  # (B·b², bs², C) tokens
        if self.pos_emb is not None:
            x = x + self.pos_emb.view(1, -1, 1)
        for blk in self.blocks:
            x = blk(x, (bs, bs))
        x = rearrange(x, "(b b1 b2) (h w) c -> b c (b1 h) (b2 w)", b1=b, b2=b, h=bs)
        return self.downsample(x)


class HTNet(nn.Module):
    """HTNet on (B, channels, S, S) inputs -> (B, num_classes) logits.

    Build with ``HTNet(image_size=28, ...)`` (the fields of ``HTNetConfig``) or ``HTNet(cfg)``;
    ``model.cfg`` holds the resolved config. Layer access for ESAAT: ``attention_layers()``,
    ``replace_attention(name, module_or_None)``, ``convert_attention(name, 'agent')``.
    """

    def __init__(self, cfg: HTNetConfig | None = None, **kwargs):
        super().__init__()
        if cfg is not None and kwargs:
            raise TypeError("pass either an HTNetConfig or keyword arguments, not both")
        self.cfg = cfg = cfg if cfg is not None else HTNetConfig(**kwargs)
        shapes = cfg.level_shapes()
        pos = [parse_pos(p) for p in cfg.level("pos")]
        attn, agents = cfg.level("attn"), cfg.level("agent_num")
        side0 = shapes[0]["side"]
        self.patch_embed = FlowPatchEmbed(
            cfg.channels, cfg.dim, cfg.patch_size, (side0, side0), pos="learned" if "lape" in pos[0] else "none"
        )
        self.levels = nn.ModuleList(
            [
                HTNetLevel(
                    s["dim"],
                    shapes[i + 1]["dim"] if i + 1 < len(shapes) else None,
                    s["heads"],
                    s["side"],
                    s["blocks"],
                    s["depth"],
                    pos[i],
                    attn[i],
                    int(agents[i]),
                    cfg.mlp_mult,
                    cfg.dim_head,
                    cfg.dropout,
                    cfg.fused,
                    lape_here=("lape" in pos[i] and i > 0),
                )
                for i, s in enumerate(shapes)
            ]
        )
        self.num_features = shapes[-1]["dim"]
        self.head_norm = LayerNorm2d(self.num_features, eps=1e-5)
        self.head = nn.Linear(self.num_features, cfg.num_classes)

    # --- forward -------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """(B, channels, S, S) -> the last level's map (B, C_last, h, w)."""
        S, c = self.cfg.image_size, self.cfg.channels
        if x.dim() != 4 or x.shape[1] != c or x.shape[-2:] != (S, S):
            raise ValueError(
                f"input must be (B, {c}, {S}, {S}) (channels u, v, strain), got {tuple(x.shape)}; "
                f"build the model with image_size matching the data"
            )
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C_last, h, w) -> pooled features (B, C_last) if ``pre_logits`` else logits (B, classes)."""
        x = self.head_norm(x).mean(dim=(-2, -1))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # --- layer access (ESAAT) --------------------------------------------------------------------------
    def _blocks(self):
        for i, level in enumerate(self.levels):
            for j, blk in enumerate(level.blocks):
                yield f"levels.{i}.blocks.{j}.attn", level, blk

    def attention_layers(self, include_removed: bool = False) -> list[tuple[str, nn.Module | None]]:
        """Ordered (name, branch) for every attention branch, input to output. A branch is called as
        ``branch(tokens (B·blocks, h·w, C), hw=(h, w))`` -> same shape. ``include_removed`` also lists
        removed ones as (name, None)."""
        return [(name, blk.attn) for name, _, blk in self._blocks() if include_removed or blk.attn is not None]

    def _find(self, name: str):
        for n, level, blk in self._blocks():
            if n == name:
                return level, blk
        names = [n for n, _, _ in self._blocks()]
        raise KeyError(f"no attention layer {name!r}; the layers are {names}")

    def replace_attention(self, name: str, module: nn.Module | None, skip_scale: float = 1.0) -> None:
        """Replace the attention branch ``name`` (from ``attention_layers``). ``None`` removes it: the block
        then computes x' = skip_scale·x, x' + FFN(LN(x')) and the branch's and its pre-norm's parameters are
        gone (skip_scale 1.0: the sub-layer is skipped; 2.0: the branch became the identity, x + x). An
        ``agentattn.AgentAttention`` must have num_prefix_tokens=0, the block's dim and window = the block
        grid; any other module is called as ``module(tokens (B·blocks, h·w, C), hw=(h, w))``."""
        level, blk = self._find(name)
        if isinstance(module, AgentAttention):
            bs = level.block_side
            if module.window != (bs, bs) or module.dim != blk.dim or module.num_prefix_tokens:
                raise ValueError(
                    f"{name}: AgentAttention must have dim={blk.dim}, window=({bs}, {bs}) (the block "
                    f"grid) and num_prefix_tokens=0, got dim={module.dim}, window={module.window}, "
                    f"num_prefix_tokens={module.num_prefix_tokens}"
                )
        elif module is not None and not isinstance(module, nn.Module):
            raise TypeError(f"replace_attention takes an nn.Module or None, got {type(module).__name__}")
        blk.set_attention(module, skip_scale=skip_scale)

    def set_attention_lambda(self, name: str, lam: float) -> None:
        """Fade the branch ``name``: its block computes (2 - lam)·x + lam·attn(LN(x)) (1 = normal, 0 = the
        branch is the identity); ``replace_attention(name, None, skip_scale=2.0)`` then folds it away."""
        _, blk = self._find(name)
        if blk.attn is None:
            raise ValueError(f"{name} is removed; there is nothing to fade")
        blk.attn_lambda = float(lam)

    def block_of(self, name: str) -> nn.Module:
        """The ``Block`` holding the attention slot ``name``."""
        return self._find(name)[1]

    def convert_attention(self, name: str, kind: str = "agent", agent_num: int | None = None) -> nn.Module:
        """Turn the softmax branch ``name`` into ``AgentAttention`` carrying over its qkv/proj weights
        (``mer.models.convert.softmax_to_agent``); returns the new branch."""
        from mer.models.convert import softmax_to_agent

        if kind != "agent":
            raise ValueError(f"only conversion to 'agent' is supported, got {kind!r}")
        level, blk = self._find(name)
        if not isinstance(blk.attn, SoftmaxAttention):
            raise ValueError(f"{name} is {type(blk.attn).__name__}, not a softmax attention branch")
        n = agent_num if agent_num is not None else int(self.cfg.level("agent_num")[int(name.split(".")[1])])
        branch = softmax_to_agent(blk.attn, window=(level.block_side, level.block_side), agent_num=n)
        branch.fused = self.cfg.fused
        blk.set_attention(branch)
        return branch

    def set_fused(self, fused: bool | None) -> None:
        """Set the ``fused`` switch of every attention branch (for softmax, None means True)."""
        set_attention_fused(self.attention_layers(), fused)

    def attention_info(self) -> list[dict]:
        """Per attention slot: name, level, kind, tokens per attention, blocks per image, dim, agents, params."""
        rows = []
        for name, level, blk in self._blocks():
            a = blk.attn
            kind = (
                "none"
                if a is None
                else "softmax"
                if isinstance(a, SoftmaxAttention)
                else "agent"
                if isinstance(a, AgentAttention)
                else type(a).__name__
            )
            rows.append(
                dict(
                    name=name,
                    level=int(name.split(".")[1]),
                    kind=kind,
                    tokens=level.block_side**2,
                    blocks=level.num_blocks**2,
                    dim=blk.dim,
                    agents=a.agent_num if isinstance(a, AgentAttention) else None,
                    params=0 if a is None else sum(p.numel() for p in a.parameters()),
                )
            )
        return rows

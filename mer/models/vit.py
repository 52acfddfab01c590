"""A small generic Vision Transformer (DeiT layout) built from the same blocks as HTNet, with the ESAAT hooks.

    x (B, in_chans, S, S)
    -> patch_embed   Conv2d p x p, stride p -> (B, (S/p)², D) tokens
    -> [cls] + tokens + learned position embedding -> (B, 1 + N, D)
    -> depth x ``mer.models.layers.Block``  (pre-norm; attention branch = ``SoftmaxAttention`` or
                     ``agentattn.AgentAttention(num_prefix_tokens=1, window=(S/p, S/p))``)
    -> LayerNorm -> forward_head: class token -> Linear -> (B, num_classes)

Every attention branch is called as ``branch(tokens (B, 1 + N, D), hw=(S/p, S/p))``. The layer access is the
one ``HTNet`` has (``attention_layers``, ``replace_attention``, ``set_attention_lambda``, ``convert_attention``,
``block_of``, ``set_fused``, ``attention_info``), so ``mer.esaat`` works on either model.

Differences from timm's DeiT: no bias in ``qkv`` (the projections ``mer``'s ``SoftmaxAttention`` and
``agentattn.AgentAttention`` share), no stochastic depth, no distillation token.

Factories (usable as ``mer train --model mer.models.vit:vit_mer_tiny``): ``deit_tiny`` (224/16, D 192, 12
blocks, 3 heads: the DeiT-T shape), ``vit_mer_tiny`` (28/4 -> 7x7 tokens, D 64, 6 blocks), ``vit_test``
(16/4 -> 4x4 tokens, D 16, 3 blocks; trains in seconds).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from agentattn import AgentAttention
from mer.models.layers import Block, SoftmaxAttention, set_attention_fused

Tensor = torch.Tensor

ATTN_KINDS = ("softmax", "agent")


class VisionTransformer(nn.Module):
    """ViT on (B, in_chans, S, S) -> (B, num_classes) logits.

    Args:
        img_size, patch_size: input side S and patch side p (S divisible by p); the grid is S/p x S/p.
        in_chans, num_classes: input channels; output classes.
        embed_dim, depth, num_heads: token width D (divisible by num_heads), blocks, heads.
        attn: 'softmax' or 'agent' for every block.
        agent_num: agents per attention for 'agent' (a perfect square <= (S/p)²).
        mlp_ratio: feed-forward width multiplier (int). dropout: attention/projection/feed-forward dropout.
        fused: attention fast path (SDPA / fused agent op); None = each module's default.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        attn: str = "softmax",
        agent_num: int = 49,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        fused: bool | None = None,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not divisible by patch_size={patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if attn not in ATTN_KINDS:
            raise ValueError(f"attn must be one of {ATTN_KINDS}, got {attn!r}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        if attn == "agent" and agent_num > self.num_tokens:
            raise ValueError(f"agent_num={agent_num} exceeds the {self.num_tokens} patch tokens: use fewer agents")
        self.embed_dim, self.num_heads, self.agent_num, self.fused = embed_dim, num_heads, agent_num, fused
        self.num_prefix_tokens = 1
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_tokens, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_drop = nn.Dropout(dropout)

        def make_attn():
            if attn == "softmax":
                return SoftmaxAttention(embed_dim, num_heads, None, dropout, fused=True if fused is None else fused)
            return AgentAttention(
                embed_dim,
                num_heads=num_heads,
                qkv_bias=False,
                attn_drop=dropout,
                proj_drop=dropout,
                agent_num=agent_num,
                window=self.grid,
                num_prefix_tokens=1,
                fused=fused,
            )

        self.blocks = nn.ModuleList([Block(embed_dim, make_attn(), mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.num_features = embed_dim
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # --- forward -------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, S, S) -> normed tokens (B, 1 + N, D) (class token first)."""
        S, c = self.img_size, self.in_chans
        if x.dim() != 4 or x.shape[1] != c or x.shape[-2:] != (S, S):
            raise ValueError(
                f"input must be (B, {c}, {S}, {S}), got {tuple(x.shape)}; build the model with "
                f"img_size matching the data"
            )
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, self.grid)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, 1 + N, D) -> class-token features (B, D) if ``pre_logits`` else logits (B, classes)."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # --- layer access (ESAAT), as in HTNet ---------------------------------------------------------------
    def _names(self) -> list[str]:
        return [f"blocks.{i}.attn" for i in range(len(self.blocks))]

    def attention_layers(self, include_removed: bool = False) -> list[tuple[str, nn.Module | None]]:
        """Ordered (name, branch) for every attention branch, input to output; ``include_removed`` also lists
        removed ones as (name, None). A branch is called as ``branch(tokens (B, 1 + N, D), hw=grid)``."""
        return [
            (n, b.attn)
            for n, b in zip(self._names(), self.blocks, strict=True)
            if include_removed or b.attn is not None
        ]

    def block_of(self, name: str) -> Block:
        """The ``Block`` holding the attention slot ``name``."""
        names = self._names()
        if name not in names:
            raise KeyError(f"no attention layer {name!r}; the layers are {names}")
        return self.blocks[names.index(name)]

    def replace_attention(self, name: str, module: nn.Module | None, skip_scale: float = 1.0) -> None:
        """Replace the branch ``name``; ``None`` removes it with its pre-norm (parameters gone) and the block
        computes x' = skip_scale·x, x' + FFN(LN(x')) (1.0: sub-layer skipped; 2.0: branch = identity)."""
        blk = self.block_of(name)
        if isinstance(module, AgentAttention):
            if module.window != self.grid or module.dim != blk.dim or module.num_prefix_tokens != 1:
                raise ValueError(
                    f"{name}: AgentAttention must have dim={blk.dim}, window={self.grid} and "
                    f"num_prefix_tokens=1, got dim={module.dim}, window={module.window}, "
                    f"num_prefix_tokens={module.num_prefix_tokens}"
                )
        elif module is not None and not isinstance(module, nn.Module):
            raise TypeError(f"replace_attention takes an nn.Module or None, got {type(module).__name__}")
        blk.set_attention(module, skip_scale=skip_scale)

    def set_attention_lambda(self, name: str, lam: float) -> None:
        """Fade the branch ``name``: (2 - lam)·x + lam·attn(LN(x)) (1 = normal, 0 = identity branch)."""
        blk = self.block_of(name)
        if blk.attn is None:
            raise ValueError(f"{name} is removed; there is nothing to fade")
        blk.attn_lambda = float(lam)

    @torch.no_grad()
    def convert_attention(self, name: str, kind: str = "agent", agent_num: int | None = None) -> nn.Module:
        """Turn the softmax branch ``name`` into ``AgentAttention`` (class token as its prefix token) with the
        same ``qkv`` (3D, D) and ``proj`` (D, D) + bias; the agent-only parameters are freshly initialised."""
        if kind != "agent":
            raise ValueError(f"only conversion to 'agent' is supported, got {kind!r}")
        blk = self.block_of(name)
        src = blk.attn
        if not isinstance(src, SoftmaxAttention):
            raise ValueError(f"{name} is {type(src).__name__}, not a softmax attention branch")
        n = self.agent_num if agent_num is None else int(agent_num)
        dst = AgentAttention(
            src.dim,
            num_heads=src.heads,
            qkv_bias=False,
            attn_drop=src.attn_drop.p,
            proj_drop=src.proj_drop.p,
            agent_num=n,
            window=self.grid,
            num_prefix_tokens=1,
            fused=self.fused,
        ).to(src.qkv.weight)
        dst.qkv.weight.copy_(src.qkv.weight)
        dst.proj.weight.copy_(src.proj.weight)
        dst.proj.bias.copy_(src.proj.bias)
        dst.train(src.training)
        blk.set_attention(dst)
        return dst

    def set_fused(self, fused: bool | None) -> None:
        """Set the ``fused`` switch of every attention branch (for softmax, None means True)."""
        self.fused = fused
        set_attention_fused(self.attention_layers(), fused)

    def attention_info(self) -> list[dict]:
        """Per attention slot: name, kind, tokens, dim, agents, params."""
        rows = []
        for name, a in self.attention_layers(include_removed=True):
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
                    level=0,
                    kind=kind,
                    tokens=1 + self.num_tokens,
                    blocks=1,
                    dim=self.embed_dim,
                    agents=a.agent_num if isinstance(a, AgentAttention) else None,
                    params=0 if a is None else sum(p.numel() for p in a.parameters()),
                )
            )
        return rows


# --- factories (``module:callable`` models for ``mer train``; any keyword overrides) ---------------------
def deit_tiny(**kwargs) -> VisionTransformer:
    """DeiT-T shape: 224/16 -> 14x14 tokens, D 192, 12 blocks, 3 heads, MLP x4, 1000 classes (~5.6M params;
    agent attention with 49 agents)."""
    return VisionTransformer(
        **{
            **dict(
                img_size=224,
                patch_size=16,
                in_chans=3,
                num_classes=1000,
                embed_dim=192,
                depth=12,
                num_heads=3,
                agent_num=49,
            ),
            **kwargs,
        }
    )


def vit_mer_tiny(**kwargs) -> VisionTransformer:
    """MER size: 28/4 -> 7x7 tokens (u, v, strain input), D 64, 6 blocks, 2 heads, 3 classes."""
    return VisionTransformer(
        **{
            **dict(
                img_size=28, patch_size=4, in_chans=3, num_classes=3, embed_dim=64, depth=6, num_heads=2, agent_num=9
            ),
            **kwargs,
        }
    )


def vit_test(**kwargs) -> VisionTransformer:
    """Test size: 16/4 -> 4x4 tokens, D 16, 3 blocks, 2 heads, MLP x2, 3 classes, 4 agents."""
    return VisionTransformer(
        **{
            **dict(
                img_size=16,
                patch_size=4,
                in_chans=3,
                num_classes=3,
                embed_dim=16,
                depth=3,
                num_heads=2,
                agent_num=4,
                mlp_ratio=2,
            ),
            **kwargs,
        }
    )

"""Weight conversions: the released HTNet state_dict -> ``HTNet``; a softmax branch -> agent attention.

Released key layout (``wangzhifengharrison/HTNet`` ``Model.py``) -> ours (1x1 convs become Linears, the
channel LayerNorm's g, b (1, C, 1, 1) become LayerNorm weight, bias (C)):

    to_patch_embedding.1.{weight,bias}        (D, p·p·C, 1, 1) -> patch_embed.proj (D, C, p, p): channel
                                              (p1·p + p2)·C + c of the 1x1 conv is pixel (p1, p2) of channel c
    layers.{i}.0.pos_emb                      -> levels.{i}.pos_emb (sliced to the block's tokens, as the release)
    layers.{i}.0.layers.{j}.0.norm.{g,b}      -> levels.{i}.blocks.{j}.norm1.{weight,bias}
    layers.{i}.0.layers.{j}.0.fn.to_qkv.weight -> levels.{i}.blocks.{j}.attn.qkv.weight
    layers.{i}.0.layers.{j}.0.fn.to_out.0.*   -> levels.{i}.blocks.{j}.attn.proj.*
    layers.{i}.0.layers.{j}.1.norm.{g,b}      -> levels.{i}.blocks.{j}.norm2.{weight,bias}
    layers.{i}.0.layers.{j}.1.fn.net.{0,3}.*  -> levels.{i}.blocks.{j}.mlp.{fc1,fc2}.*
    layers.{i}.1.0.*, layers.{i}.1.1.{g,b}    -> levels.{i}.downsample.0.*, levels.{i}.downsample.1.{weight,bias}
    mlp_head.0.{g,b}, mlp_head.2.*            -> head_norm.{weight,bias}, head.*
"""

from __future__ import annotations

import re

import torch

from agentattn import AgentAttention
from mer.models.htnet import HTNet
from mer.models.layers import SoftmaxAttention

Tensor = torch.Tensor

_RULES = [
    (r"layers\.(\d+)\.0\.pos_emb", r"levels.\1.pos_emb"),
    (r"layers\.(\d+)\.0\.layers\.(\d+)\.0\.norm\.g", r"levels.\1.blocks.\2.norm1.weight"),
    (r"layers\.(\d+)\.0\.layers\.(\d+)\.0\.norm\.b", r"levels.\1.blocks.\2.norm1.bias"),
    (r"layers\.(\d+)\.0\.layers\.(\d+)\.0\.fn\.to_qkv\.weight", r"levels.\1.blocks.\2.attn.qkv.weight"),
    (r"layers\.(\d+)\.0\.layers\.(\d+)\.0\.fn\.to_out\.0\.(weight|bias)", r"levels.\1.blocks.\2.attn.proj.\3"),
    (r"layers\.(\d+)\.0\.layers\.(\d+)\.1\.norm\.g", r"levels.\1.blocks.\2.norm2.weight"),
    (r"layers\.(\d+)\.0\.layers\.(\d+)\.1\.norm\.b", r"levels.\1.blocks.\2.norm2.bias"),
    (r"layers\.(\d+)\.0\.layers\.(\d+)\.1\.fn\.net\.0\.(weight|bias)", r"levels.\1.blocks.\2.mlp.fc1.\3"),
    (r"layers\.(\d+)\.0\.layers\.(\d+)\.1\.fn\.net\.3\.(weight|bias)", r"levels.\1.blocks.\2.mlp.fc2.\3"),
    (r"layers\.(\d+)\.1\.0\.(weight|bias)", r"levels.\1.downsample.0.\2"),
    (r"layers\.(\d+)\.1\.1\.g", r"levels.\1.downsample.1.weight"),
    (r"layers\.(\d+)\.1\.1\.b", r"levels.\1.downsample.1.bias"),
    (r"mlp_head\.0\.g", r"head_norm.weight"),
    (r"mlp_head\.0\.b", r"head_norm.bias"),
    (r"mlp_head\.2\.(weight|bias)", r"head.\1"),
]

#: constructor arguments of the released ``HTNet`` (``dim_head`` is accepted there but unused)
ORIGINAL_KWARGS = (
    "image_size",
    "patch_size",
    "num_classes",
    "dim",
    "heads",
    "num_hierarchies",
    "block_repeats",
    "mlp_mult",
    "channels",
    "dim_head",
    "dropout",
)


def convert_original_state_dict(state_dict: dict, model: HTNet) -> dict:
    """Map a released-HTNet state_dict onto ``model``'s keys (see the module docstring)."""
    out, unknown = {}, []
    for key, val in state_dict.items():
        if key.startswith("to_patch_embedding.1."):
            kind = key.rsplit(".", 1)[1]
            if kind == "weight":
                D, C, p, _ = model.patch_embed.proj.weight.shape
                if tuple(val.shape) != (D, p * p * C, 1, 1):
                    raise ValueError(
                        f"{key}: expected ({D}, {p * p * C}, 1, 1), got {tuple(val.shape)}; are the "
                        f"original_kwargs those the state_dict was saved with?"
                    )
                val = val.reshape(D, p, p, C).permute(0, 3, 1, 2).contiguous()
            out[f"patch_embed.proj.{kind}"] = val
            continue
        for pat, rep in _RULES:
            if re.fullmatch(pat, key):
                new = re.sub(pat, rep, key)
                if new.endswith(".pos_emb"):  # the release slices pos_emb[:h*w] at run time
                    n = model.get_parameter(new).numel()
                    if val.numel() < n:
                        raise ValueError(f"{key} has {val.numel()} entries, the block needs {n}")
                    val = val[:n]
                shape = model.get_parameter(new).shape  # (o, i, 1, 1) -> (o, i); (1, C, 1, 1) -> (C)
                if val.numel() != shape.numel():
                    raise ValueError(
                        f"{key}: shape {tuple(val.shape)} does not fit {new} {tuple(shape)}; are "
                        f"the original_kwargs those the state_dict was saved with?"
                    )
                out[new] = val.reshape(shape)
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"keys not in the released HTNet layout: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def htnet_from_original(state_dict: dict, **original_kwargs) -> HTNet:
    """Our ``HTNet`` with the weights of a released-HTNet state_dict; ``original_kwargs`` are the release's
    constructor arguments (e.g. ``image_size=28, patch_size=7, dim=256, heads=3, num_hierarchies=3,
    block_repeats=(2, 2, 10), num_classes=3``). Same outputs as the release (fp32, ~1e-6 relative)."""
    bad = set(original_kwargs) - set(ORIGINAL_KWARGS)
    if bad:
        raise TypeError(f"unknown released-HTNet arguments {sorted(bad)}; it takes {ORIGINAL_KWARGS}")
    kw = dict(original_kwargs)
    kw.pop("dim_head", None)  # the release computes dim_head = dim // heads regardless of this argument
    if isinstance(kw.get("block_repeats"), list):
        kw["block_repeats"] = tuple(kw["block_repeats"])
    model = HTNet(pos="block_scalar", attn="softmax", dim_head=None, **kw)
    model.load_state_dict(convert_original_state_dict(state_dict, model), strict=True)
    return model


@torch.no_grad()
def softmax_to_agent(branch: SoftmaxAttention, window, agent_num: int = 9) -> AgentAttention:
    """An ``agentattn.AgentAttention`` (no prefix tokens, ``window`` = the block grid) with ``branch``'s
    projections: ``qkv`` (3C, C) without bias and ``proj`` (C, C) + bias are copied as they are (the
    release's 1x1 convs (3C, C, 1, 1) were reshaped to these at load time); the heads split the same way
    (contiguous C/H slices of q, k, v). Dropout carries over. The agent-only parameters (position
    biases, depthwise conv) are freshly initialised.

    Requires inner_dim == dim: AgentAttention's projections are C -> 3C and C -> C with head width C/H. The
    released configuration (dim 256, 3 heads: inner 255) cannot convert; every registered working variant
    has heads dividing dim."""
    if not isinstance(branch, SoftmaxAttention):
        raise TypeError(f"expected a SoftmaxAttention branch, got {type(branch).__name__}")
    C, H = branch.dim, branch.heads
    if branch.inner_dim != C:
        raise ValueError(
            f"cannot carry weights over: inner_dim = dim_head·heads = {branch.inner_dim} != dim = {C} "
            f"(heads={H} does not divide dim, or dim_head was set). Use dim divisible by heads and "
            f"dim_head=None, as every registered working variant does."
        )
    attn = AgentAttention(
        C,
        num_heads=H,
        qkv_bias=False,
        attn_drop=branch.attn_drop.p,
        proj_drop=branch.proj_drop.p,
        agent_num=agent_num,
        window=window,
        num_prefix_tokens=0,
    ).to(branch.qkv.weight)
    attn.qkv.weight.copy_(branch.qkv.weight)
    attn.proj.weight.copy_(branch.proj.weight)
    attn.proj.bias.copy_(branch.proj.bias)
    attn.train(branch.training)
    return attn

"""Attributed copy (test fixture, issue 17) of AgentSD's attention patch and the ldm CrossAttention it patches.

Sources:
- https://github.com/LeapLabTHU/Agent-Attention, path agentsd/patch.py, commit
  207ce3eb357b22ef8a15f8fa21cd1f14697bbaba: ``exists``, ``default`` and ``make_agent_attn`` (lines 80-178),
  verbatim.
- https://github.com/CompVis/stable-diffusion, path ldm/modules/attention.py (as stored at commit
  09bf6dd7c1d3f4c1add1a8de6fd4acce075b9477): ``CrossAttention.__init__`` (its forward is what
  ``make_agent_attn`` replaces; the memory-dependent slicing helpers are left out).
"""

# ruff: noqa
from inspect import isfunction
from typing import Type

import torch
from einops import rearrange, repeat
from torch import einsum, nn


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)

        self.scale = dim_head**-0.5
        self.heads = heads

        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)

        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))


def exists(val):
    return val is not None


def default(val, d):
    if exists(val):
        return val
    return d() if isfunction(d) else d


def make_agent_attn(
    block_class: Type[torch.nn.Module], k_scale2, k_shortcut, attn_precision=None
) -> Type[torch.nn.Module]:
    """
    This patch applies AgentSD to the forward function of the block.
    """

    class AgentAttention(block_class):
        # Save for unpatching later
        _parent = block_class

        def set_new_params(self):
            self.k_scale2 = k_scale2
            self.k_shortcut = k_shortcut
            self.attn_precision = attn_precision

        def forward(self, x, agent=None, context=None, mask=None):
            if agent is not None:
                if agent.shape[1] * 2 < x.shape[1]:
                    k_scale2 = self.k_scale2
                    k_shortcut = self.k_shortcut

                    h = self.heads

                    q = self.to_q(x)
                    context = default(context, x)
                    k = self.to_k(context)
                    v = self.to_v(context)
                    agent = self.to_q(agent)

                    q, k, v, agent = map(lambda t: rearrange(t, "b n (h d) -> (b h) n d", h=h), (q, k, v, agent))
                    if exists(mask):
                        print("Mask not supported yet!")

                    # force cast to fp32 to avoid overflowing
                    if self.attn_precision == "fp32":
                        with torch.autocast(enabled=False, device_type="cuda"):
                            agent, k = agent.float(), k.float()
                            sim1 = einsum("b i d, b j d -> b i j", agent, k) * self.scale
                        del k
                    else:
                        sim1 = einsum("b i d, b j d -> b i j", agent, k) * self.scale

                    # attention, what we cannot get enough of
                    attn1 = sim1.softmax(dim=-1)
                    agent_feature = einsum("b i j, b j d -> b i d", attn1, v)

                    # force cast to fp32 to avoid overflowing
                    if self.attn_precision == "fp32":
                        with torch.autocast(enabled=False, device_type="cuda"):
                            q = q.float()
                            sim2 = einsum("b i d, b j d -> b i j", q, agent) * self.scale**k_scale2
                        del q, agent
                    else:
                        sim2 = einsum("b i d, b j d -> b i j", q, agent) * self.scale**k_scale2

                    # attention, what we cannot get enough of
                    attn2 = sim2.softmax(dim=-1)
                    out = einsum("b i j, b j d -> b i d", attn2, agent_feature)

                    out = out * 1.0 + v * k_shortcut

                    out = rearrange(out, "(b h) n d -> b n (h d)", h=h)
                    return self.to_out(out)

            h = self.heads

            q = self.to_q(x)
            context = default(context, x)
            k = self.to_k(context)
            v = self.to_v(context)

            q, k, v = map(lambda t: rearrange(t, "b n (h d) -> (b h) n d", h=h), (q, k, v))

            sim = einsum("b i d, b j d -> b i j", q, k) * self.scale

            if exists(mask):
                mask = rearrange(mask, "b ... -> b (...)")
                max_neg_value = -torch.finfo(sim.dtype).max
                mask = repeat(mask, "b j -> (b h) () j", h=h)
                sim.masked_fill_(~mask, max_neg_value)

            # attention, what we cannot get enough of
            attn = sim.softmax(dim=-1)

            out = einsum("b i j, b j d -> b i d", attn, v)
            out = rearrange(out, "(b h) n d -> b n (h d)", h=h)
            return self.to_out(out)

    return AgentAttention

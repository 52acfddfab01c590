"""Attributed copy (test fixture, issue 17) of AgentAttention (the detection backbone's, with downstream_agent_shape) from LeapLabTHU/Agent-Attention.

Source: https://github.com/LeapLabTHU/Agent-Attention, path downstream/detection/mmdet/models/backbones/agent_pvt.py, commit 207ce3eb357b22ef8a15f8fa21cd1f14697bbaba
(Dongchen Han et al., "Agent Attention", ECCV 2024). Copied verbatim: the classes and functions listed
below, lines 81-201 of that file. Changed: the imports only (timm's helpers come from _timm_helpers.py, a copy of
the same timm functions; nothing else is imported). Used by tests/agentattn/test_convert_*.py to check that
agentattn reproduces these modules exactly.
"""

# ruff: noqa
import torch
import torch.nn as nn

from _timm_helpers import trunc_normal_


class AgentAttention(nn.Module):
    def __init__(
        self,
        dim,
        num_patches,
        num_heads=8,
        qkv_bias=False,
        qk_scale=None,
        attn_drop=0.0,
        proj_drop=0.0,
        sr_ratio=1,
        kernel_size=3,
        agent_num=49,
        downstream_agent_shape=(7, 7),
        scale=-0.5,
        **kwargs,
    ):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} should be divided by num_heads {num_heads}."

        self.dim = dim
        self.num_patches = num_patches
        window_size = (int(num_patches**0.5), int(num_patches**0.5))
        self.window_size = window_size
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**scale

        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

        self.kernel_size = kernel_size
        self.agent_num = agent_num

        self.dwc = nn.Conv2d(
            in_channels=dim, out_channels=dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim
        )
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, window_size[0] // sr_ratio, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1, window_size[1] // sr_ratio))
        self.ha_bias = nn.Parameter(torch.zeros(1, num_heads, window_size[0], 1, agent_num))
        self.wa_bias = nn.Parameter(torch.zeros(1, num_heads, 1, window_size[1], agent_num))
        trunc_normal_(self.an_bias, std=0.02)
        trunc_normal_(self.na_bias, std=0.02)
        trunc_normal_(self.ah_bias, std=0.02)
        trunc_normal_(self.aw_bias, std=0.02)
        trunc_normal_(self.ha_bias, std=0.02)
        trunc_normal_(self.wa_bias, std=0.02)
        pool_size = int(agent_num**0.5)
        self.pool_size = pool_size
        self.downstream_agent_shape = downstream_agent_shape
        self.pool = nn.AdaptiveAvgPool2d(output_size=downstream_agent_shape)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, H, W):
        b, n, c = x.shape
        num_heads = self.num_heads
        head_dim = c // num_heads
        q = self.q(x)

        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(b, c, H, W)
            x_ = self.sr(x_).reshape(b, c, -1).permute(0, 2, 1)
            x_ = self.norm(x_)
            kv = self.kv(x_).reshape(b, -1, 2, c).permute(2, 0, 1, 3)
        else:
            kv = self.kv(x).reshape(b, -1, 2, c).permute(2, 0, 1, 3)
        k, v = kv[0], kv[1]

        # following code is under the condition of self.sr_ratio == 1
        assert self.sr_ratio == 1
        downstream_agent_num = self.downstream_agent_shape[0] * self.downstream_agent_shape[1]
        agent_tokens = self.pool(q.reshape(b, H, W, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        q = q.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        k = k.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        v = v.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        agent_tokens = agent_tokens.reshape(b, downstream_agent_num, num_heads, head_dim).permute(0, 2, 1, 3)

        # interpolate hw
        position_bias1 = nn.functional.interpolate(self.an_bias, size=(H, W), mode="bilinear")
        position_bias1 = position_bias1.reshape(num_heads, self.pool_size, self.pool_size, H * W).permute(0, 3, 1, 2)
        # interpolate agent_num
        position_bias1 = nn.functional.interpolate(position_bias1, size=self.downstream_agent_shape, mode="bilinear")
        position_bias1 = position_bias1.reshape(num_heads, H * W, downstream_agent_num).permute(0, 2, 1)
        position_bias1 = position_bias1.reshape(1, num_heads, downstream_agent_num, H * W).repeat(b, 1, 1, 1)

        # interpolate hw
        position_bias2 = nn.functional.interpolate(
            (self.ah_bias + self.aw_bias).squeeze(0), size=(H, W), mode="bilinear"
        )
        position_bias2 = position_bias2.reshape(num_heads, self.pool_size, self.pool_size, H * W).permute(0, 3, 1, 2)
        # interpolate agent_num
        position_bias2 = nn.functional.interpolate(position_bias2, size=self.downstream_agent_shape, mode="bilinear")
        position_bias2 = position_bias2.reshape(num_heads, H * W, downstream_agent_num).permute(0, 2, 1)
        position_bias2 = position_bias2.reshape(1, num_heads, downstream_agent_num, H * W).repeat(b, 1, 1, 1)

        position_bias = position_bias1 + position_bias2
        agent_attn = self.softmax((agent_tokens * self.scale) @ k.transpose(-2, -1) + position_bias)
        agent_attn = self.attn_drop(agent_attn)
        agent_v = agent_attn @ v

        # interpolate hw
        agent_bias1 = nn.functional.interpolate(self.na_bias, size=(H, W), mode="bilinear")
        agent_bias1 = agent_bias1.reshape(num_heads, self.pool_size, self.pool_size, H * W).permute(0, 3, 1, 2)
        # interpolate agent_num
        agent_bias1 = nn.functional.interpolate(agent_bias1, size=self.downstream_agent_shape, mode="bilinear")
        agent_bias1 = agent_bias1.reshape(1, num_heads, H * W, downstream_agent_num).repeat(b, 1, 1, 1)

        # interpolate hw
        agent_bias2 = (self.ha_bias + self.wa_bias).squeeze(0).permute(0, 3, 1, 2)
        agent_bias2 = nn.functional.interpolate(agent_bias2, size=(H, W), mode="bilinear")
        agent_bias2 = agent_bias2.reshape(num_heads, self.pool_size, self.pool_size, H * W).permute(0, 3, 1, 2)
        # interpolate agent_num
        agent_bias2 = nn.functional.interpolate(agent_bias2, size=self.downstream_agent_shape, mode="bilinear")
        agent_bias2 = agent_bias2.reshape(1, num_heads, H * W, downstream_agent_num).repeat(b, 1, 1, 1)
        agent_bias = agent_bias1 + agent_bias2
        q_attn = self.softmax((q * self.scale) @ agent_tokens.transpose(-2, -1) + agent_bias)
        q_attn = self.attn_drop(q_attn)
        x = q_attn @ agent_v

        x = x.transpose(1, 2).reshape(b, n, c)
        v = v.transpose(1, 2).reshape(b, H, W, c).permute(0, 3, 1, 2)
        x = x + self.dwc(v).permute(0, 2, 3, 1).reshape(b, n, c)

        x = self.proj(x)
        x = self.proj_drop(x)
        return x

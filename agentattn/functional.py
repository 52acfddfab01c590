"""The documented functional entry points, one per op."""

from agentattn.ops.agent_attention.op import agent_attention
from agentattn.ops.flow_patch_embed.op import flow_patch_embed

__all__ = ["agent_attention", "flow_patch_embed"]

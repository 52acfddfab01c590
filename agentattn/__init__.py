"""agentattn: fused Agent Attention and flow-patch LAPE embedding for PyTorch.

    import agentattn
    out = agentattn.agent_attention(q, k, v, agents, bias_agent, bias_query)   # (B, H, N, d)
    attn = agentattn.AgentAttention(dim=192, num_heads=3, agent_num=49, window=14, num_prefix_tokens=1)
    agentattn.backends()                                                       # what runs where
    agentattn.convert.swap(model)        # the authors' Agent-DeiT/PVT/Swin/CSwin attention -> ours, in place
    agentattn.convert.timm_vit(model)    # a timm ViT/DeiT -> agent attention, in place

Kernels: C++ on CPU (``agentattn._C``), CUDA and Triton on NVIDIA GPUs; a PyTorch reference for each op
(``agentattn.ops.<op>.naive``) defines the semantics. Nothing queries a GPU at import time.
"""

from agentattn import convert
from agentattn._ext import backends
from agentattn.functional import agent_attention, flow_patch_embed
from agentattn.modules import AgentAttention, FlowPatchEmbed, convert_pvt_state_dict

__version__ = "0.1.0"
__all__ = [
    "agent_attention",
    "flow_patch_embed",
    "AgentAttention",
    "FlowPatchEmbed",
    "convert_pvt_state_dict",
    "backends",
    "convert",
]

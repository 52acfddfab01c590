"""Drop-in nn.Modules."""

from agentattn.modules.agent_attention import AgentAttention, convert_pvt_state_dict
from agentattn.modules.flow_patch_embed import FlowPatchEmbed

__all__ = ["AgentAttention", "FlowPatchEmbed", "convert_pvt_state_dict"]

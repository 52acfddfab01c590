"""The HTNet model family: the released architecture and working variants with LAPE and agent attention.

    from mer.models import create_model, list_models
    model = create_model("htnet_small_lape_agent")        # (B, 3, 28, 28) u, v, strain -> (B, 3) logits
    model.attention_layers()                               # [(name, branch), ...] for ESAAT
    model.replace_attention(name, None)                    # remove a branch (parameters gone)
    model.convert_attention(name, "agent")                 # softmax -> agent, q/k/v/out carried over

See docs/models.md.
"""

from mer.models.convert import convert_original_state_dict, htnet_from_original, softmax_to_agent
from mer.models.htnet import HTNet, HTNetConfig
from mer.models.layers import Aggregate, Block, FeedForward, LayerNorm2d, SoftmaxAttention
from mer.models.registry import create_model, describe, list_models, register_variant, variant_config

__all__ = [
    "HTNet",
    "HTNetConfig",
    "create_model",
    "list_models",
    "register_variant",
    "variant_config",
    "describe",
    "htnet_from_original",
    "convert_original_state_dict",
    "softmax_to_agent",
    "Aggregate",
    "Block",
    "FeedForward",
    "LayerNorm2d",
    "SoftmaxAttention",
]

"""ESAAT: entropy-based selection of attention layers, their removal, and agent attention for the rest.

    from mer.esaat import gaussian_entropy, layer_transfer_entropy, greedy_select, prune, ESAATConfig, prune_run
    te = layer_transfer_entropy(model, x_calib)              # {layer: H(all) - H(layer skipped)}
    sel = greedy_select(model, x_calib, k=2)                 # or budget=0.85 / flops_budget=0.8
    pruned = prune(model, sel.order)                         # removed + the rest converted to agent attention
    prune_run("runs/demo", ESAATConfig(remove=2))            # every fold of a run (`mer prune`)

Works on any model exposing the layer-access hooks (``attention_layers``, ``block_of``,
``replace_attention``, ``set_attention_lambda``, ``convert_attention``, ``forward_features``,
``forward_head``): ``mer.models.HTNet`` and ``mer.models.vit.VisionTransformer``. See docs/esaat.md.
"""

from mer.esaat.agreement import ranking_agreement, selection_agreement
from mer.esaat.entropy import gaussian_entropy
from mer.esaat.finetune import FinetuneConfig, finetune
from mer.esaat.pipeline import ESAATConfig, esaat_model, load_pruned, prune_fold, prune_run
from mer.esaat.remove import convert_remaining, fade_lambda, model_cost, prune, remove_layers
from mer.esaat.select import Selection, greedy_select
from mer.esaat.transfer import head_features, layer_transfer_entropy, set_entropy, skipped, transfer_entropy

__all__ = [
    "gaussian_entropy",
    "head_features",
    "set_entropy",
    "transfer_entropy",
    "layer_transfer_entropy",
    "skipped",
    "Selection",
    "greedy_select",
    "remove_layers",
    "convert_remaining",
    "prune",
    "fade_lambda",
    "model_cost",
    "FinetuneConfig",
    "finetune",
    "ESAATConfig",
    "esaat_model",
    "prune_fold",
    "prune_run",
    "load_pruned",
    "ranking_agreement",
    "selection_agreement",
]

"""Greedy selection of the attention layers to remove.

Step t (selected set S, empty at first): for every remaining layer l compute T(S ∪ {l}) (transfer entropy
of the set, ``mer.esaat.transfer``) and add the l whose set changes the head's entropy least, i.e. the
smallest |T(S ∪ {l})| (``criterion='abs'``, default) or the smallest signed T (``'signed'``: a removal that
*raises* the head's entropy counts as harmless). Stop after ``k`` layers or, with a budget, as soon as the
pruned model (removal + conversion of the rest to agent attention, as ``mer.esaat.remove.prune`` builds it)
has at most ``budget`` x the parameters (or ``flops_budget`` x the FLOPs) of the original.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from mer.esaat.remove import model_cost, prune
from mer.esaat.transfer import check_model, layer_transfer_entropy, set_entropy

CRITERIA = ("abs", "signed")


@dataclass
class Selection:
    """The result of ``greedy_select``.

    order: removed layers in the order chosen; set_te[t]: T of the first t+1 of them; layer_te: T of each
    layer alone (all present layers); steps[t]: {layer: T(S ∪ {layer})} of every candidate at step t;
    cost[t]: {'params', 'flops'} of the pruned model after t+1 removals; base_cost: the original's;
    base_entropy: H(head features) with nothing skipped (Σ log std, nats)."""

    order: list = field(default_factory=list)
    set_te: list = field(default_factory=list)
    layer_te: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    cost: list = field(default_factory=list)
    base_cost: dict = field(default_factory=dict)
    base_entropy: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def greedy_select(
    model: nn.Module,
    x: torch.Tensor,
    *,
    k: int | None = None,
    budget: float | None = None,
    flops_budget: float | None = None,
    skip_scale: float = 2.0,
    criterion: str = "abs",
    convert: bool = True,
    agent_num: int | None = None,
    full: bool = False,
    progress: bool = False,
) -> Selection:
    """Select layers to remove on calibration inputs ``x`` (n, ...) (training subjects only). Exactly one
    of ``k`` (0 <= k <= number of attention layers), ``budget`` or ``flops_budget`` (fractions in (0, 1]
    of the original's parameters / FLOPs that the pruned model may keep)."""
    from tqdm.auto import tqdm

    check_model(model)
    if sum(v is not None for v in (k, budget, flops_budget)) != 1:
        raise ValueError("give exactly one of k, budget (parameter fraction) or flops_budget (FLOP fraction)")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    names = [n for n, _ in model.attention_layers()]
    if k is not None and not 0 <= k <= len(names):
        raise ValueError(f"k={k}: the model has {len(names)} attention layers; choose 0 <= k <= {len(names)}")
    for b, what in ((budget, "budget"), (flops_budget, "flops_budget")):
        if b is not None and not 0.0 < b <= 1.0:
            raise ValueError(f"{what}={b} must be a fraction in (0, 1] of the original model's cost")
    example = x[:1]
    sel = Selection(base_cost=model_cost(model, example))
    sel.base_entropy = set_entropy(model, x, (), skip_scale, full)
    sel.layer_te = layer_transfer_entropy(model, x, skip_scale, full)

    def within(cost: dict) -> bool:
        if budget is not None:
            return cost["params"] <= budget * sel.base_cost["params"]
        return cost["flops"] <= flops_budget * sel.base_cost["flops"]

    if k == 0 or (k is None and within(model_cost(prune(model, [], convert=convert, agent_num=agent_num), example))):
        return sel
    total = k if k is not None else len(names)
    bar = tqdm(total=total, desc="ESAAT selection", unit="layer", leave=False, disable=not progress)
    remaining = list(names)
    while remaining:
        cand = {}
        for name in remaining:
            cand[name] = sel.base_entropy - set_entropy(model, x, sel.order + [name], skip_scale, full)
        key = (lambda n: abs(cand[n])) if criterion == "abs" else (lambda n: cand[n])
        best = min(remaining, key=key)  # ties: the earlier layer (min keeps the first)
        remaining.remove(best)
        sel.order.append(best)
        sel.set_te.append(cand[best])
        sel.steps.append(cand)
        sel.cost.append(
            model_cost(prune(model, sel.order, convert=convert, skip_scale=skip_scale, agent_num=agent_num), example)
        )
        bar.update()
        if (k is not None and len(sel.order) == k) or (k is None and within(sel.cost[-1])):
            break
    bar.close()
    if k is None and not within(sel.cost[-1]):
        what = f"{budget} of the parameters" if budget is not None else f"{flops_budget} of the FLOPs"
        raise ValueError(
            f"removing every attention layer still leaves more than {what} "
            f"({sel.cost[-1]} vs the original {sel.base_cost}); choose a larger budget"
        )
    return sel

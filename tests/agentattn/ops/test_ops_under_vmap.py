"""Both ops under torch.func.vmap (mer trains several folds' models in one vmapped step): 'auto' takes the
reference composition, which has PyTorch's batching rules, instead of running the compiled op once per
batch entry with a "batching rule" performance warning on every call. Results equal per-entry calls of
the compiled op."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

import agentattn
from agentattn import _ext

pytestmark = pytest.mark.skipif("cpp" not in agentattn.backends()["cpu"], reason="needs the compiled extension")
F = 3  # vmapped entries (folds)


def _fpe_inputs(g):
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return mk(F, 2, 3, 12, 12), mk(F, 8, 3, 4, 4), mk(F, 8), mk(F, 8, 3, 3)


def _aa_inputs(g):
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return mk(F, 2, 2, 20, 8), mk(F, 2, 2, 20, 8), mk(F, 2, 2, 20, 8), mk(F, 2, 2, 5, 8)


CASES = {
    "flow_patch_embed": (_fpe_inputs, lambda x, w, b, q, **kw: agentattn.flow_patch_embed(x, w, b, q, 4, **kw)),
    "agent_attention": (_aa_inputs, lambda q, k, v, a, **kw: agentattn.agent_attention(q, k, v, a, **kw)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_equals_per_entry_calls_without_fallback_warning(name, capfd):
    make, op = CASES[name]
    xs = make(torch.Generator().manual_seed(0))
    loss = lambda *t: op(*t).square().sum()  # noqa: E731
    got = vmap(op)(*xs)
    got_grads = vmap(grad(loss, argnums=tuple(range(len(xs)))))(*xs)  # per-entry gradients, nested transforms
    want = torch.stack([op(*(t[f] for t in xs), backend="cpp") for f in range(F)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for i, gg in enumerate(got_grads):
        leaves = [xs[i][f].clone().requires_grad_() for f in range(F)]
        for f, leaf in enumerate(leaves):
            args = [leaf if j == i else t[f] for j, t in enumerate(xs)]
            op(*args, backend="cpp").square().sum().backward()
            torch.testing.assert_close(gg[f], leaf.grad, rtol=1e-9, atol=1e-9)
    assert "batching rule" not in capfd.readouterr().err


def test_under_vmap_sees_batched_tensors_through_other_wrappers():
    x = torch.randn(F, 4)
    assert not _ext.under_vmap(x, None)
    seen = []
    vmap(lambda t: seen.append(_ext.under_vmap(None, t)) or t)(x)
    vmap(grad(lambda t: seen.append(_ext.under_vmap(t)) or t.sum()))(x)  # GradTracking around Batched
    grad(lambda t: seen.append(_ext.under_vmap(t)) or t.sum())(x)  # grad alone: not batched
    assert seen == [True, True, False]

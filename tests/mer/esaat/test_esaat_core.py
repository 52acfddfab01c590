"""mer.esaat: entropy estimator, transfer entropy, greedy selection, removal, conversion, fine-tuning."""

import math

import numpy as np
import pytest
import torch

from agentattn import AgentAttention
from mer.esaat import (
    ESAATConfig,
    FinetuneConfig,
    esaat_model,
    finetune,
    gaussian_entropy,
    greedy_select,
    layer_transfer_entropy,
    model_cost,
    prune,
    ranking_agreement,
    selection_agreement,
    set_entropy,
    skipped,
    transfer_entropy,
)
from mer.models import SoftmaxAttention, create_model
from mer.models.vit import vit_test


def tiny_htnet():
    torch.manual_seed(0)
    return create_model("htnet_tiny", block_repeats=2).eval()  # 4 softmax attention layers


def calib(n=64, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- entropy ------------------------------------------------------------------------------------------
def test_entropy_diagonal_gaussian_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 7.0], dtype=torch.float64)
    x = torch.randn(40000, 5, generator=g, dtype=torch.float64) * sigma + 3.0
    closed = float(sigma.log().sum())  # Σ log σ_d; the full entropy adds D/2·log(2πe)
    assert gaussian_entropy(x) == pytest.approx(closed, abs=0.02)
    assert gaussian_entropy(x, constant=True) == pytest.approx(closed + 2.5 * math.log(2 * math.pi * math.e), abs=0.02)


def test_entropy_full_covariance_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(4, dtype=torch.float64)
    x = torch.randn(50000, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    closed = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))
    assert gaussian_entropy(x, full=True, constant=True) == pytest.approx(closed, abs=0.03)
    # the diagonal estimator ignores correlations: an upper bound (Hadamard's inequality)
    assert gaussian_entropy(x, constant=True) > closed


def test_entropy_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_entropy(torch.randn(1, 3))
    with pytest.raises(ValueError, match="samples, dims"):
        gaussian_entropy(torch.randn(5))
    with pytest.raises(ValueError, match="more than 8 samples"):
        gaussian_entropy(torch.randn(5, 8), full=True)


# --- transfer entropy and selection ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "make", [tiny_htnet, lambda: (torch.manual_seed(0), vit_test(depth=4))[1].eval()], ids=["htnet_tiny", "vit_test"]
)
def test_layer_without_effect_has_zero_te_and_goes_first(make):
    model = make()
    x = calib(size=model.cfg.image_size if hasattr(model, "cfg") else model.img_size)
    names = [n for n, _ in model.attention_layers()]
    dead = names[2]
    with torch.no_grad():  # the branch adds exactly 0: skipping its sub-layer (skip_scale 1) changes nothing
        model.block_of(dead).attn.proj.weight.zero_()
        model.block_of(dead).attn.proj.bias.zero_()
    te = layer_transfer_entropy(model, x, skip_scale=1.0)
    assert list(te) == names
    assert abs(te[dead]) < 1e-6
    assert min(abs(v) for k, v in te.items() if k != dead) > 1e-3
    sel = greedy_select(model, x, k=2, skip_scale=1.0)
    assert sel.order[0] == dead and abs(sel.set_te[0]) < 1e-6
    # the set's T is recomputed with both skipped
    assert sel.set_te[1] == pytest.approx(transfer_entropy(model, x, sel.order, skip_scale=1.0), abs=1e-9)
    # (costs of removal + conversion: agent attention adds position biases, so only the trend is fixed)
    assert len(sel.cost) == 2 and sel.cost[1]["params"] < sel.cost[0]["params"]


def test_skipped_restores_the_model():
    model = tiny_htnet()
    x = calib()
    ref = model(x)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    h0 = set_entropy(model, x)
    with skipped(model, ["levels.0.blocks.1.attn", "levels.1.blocks.0.attn"]):
        assert len(model.attention_layers()) == 2
        assert not torch.allclose(model(x), ref)
    assert torch.equal(model(x), ref) and model.state_dict().keys() == sd.keys()
    assert set_entropy(model, x) == h0


def test_budget_selection():
    model = tiny_htnet()
    x = calib()
    base = model_cost(model, x[:1])
    sel = greedy_select(model, x, budget=0.97, convert=False)
    assert sel.cost[-1]["params"] <= 0.97 * base["params"]
    assert len(sel.order) == 1 or sel.cost[-2]["params"] > 0.97 * base["params"]
    fsel = greedy_select(model, x, flops_budget=0.8, convert=False)
    assert fsel.cost[-1]["flops"] <= 0.8 * base["flops"]
    with pytest.raises(ValueError, match="larger budget"):
        greedy_select(model, x, budget=0.1, convert=False)
    with pytest.raises(ValueError, match="exactly one"):
        greedy_select(model, x, k=1, budget=0.5)
    with pytest.raises(ValueError, match="0 <= k <= 4"):
        greedy_select(model, x, k=5)


# --- removal and conversion ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make", [tiny_htnet, lambda: (torch.manual_seed(0), vit_test())[1].eval()], ids=["htnet_tiny", "vit_test"]
)
def test_removal_deletes_parameters_and_flops_and_carries_weights(make):
    model = make()
    x = calib(n=2, size=model.cfg.image_size if hasattr(model, "cfg") else model.img_size)
    names = [n for n, _ in model.attention_layers()]
    before = model_cost(model, x[:1])
    sd0 = model.state_dict()
    removed = prune(model, [names[0]], convert=False)
    sd1 = removed.state_dict()
    gone = [k for k in sd0 if k.startswith(names[0]) or k.startswith(names[0].replace("attn", "norm1"))]
    assert gone and not any(k in sd1 for k in gone) and set(sd1) == set(sd0) - set(gone)
    attn_params = sum(p.numel() for p in model.block_of(names[0]).attn.parameters())
    assert sum(v.numel() for v in sd1.values()) == sum(v.numel() for v in sd0.values()) - attn_params - 2 * 16
    after = model_cost(removed, x[:1])  # FlopCounterMode: q kᵀ, P v and the qkv/proj matmuls are gone
    assert after["params"] < before["params"] and after["flops"] < before["flops"]
    pruned = prune(model, [names[0]], convert=True)
    assert model_cost(pruned, x[:1])["flops"] < before["flops"]
    # every other layer became agent attention with identical q/k/v/proj
    for name in names[1:]:
        new, old = pruned.block_of(name).attn, model.block_of(name).attn
        assert isinstance(new, AgentAttention) and isinstance(old, SoftmaxAttention)
        assert torch.equal(new.qkv.weight, old.qkv.weight)
        assert torch.equal(new.proj.weight, old.proj.weight) and torch.equal(new.proj.bias, old.proj.bias)
    assert model.attention_layers()[0][0] == names[0]  # prune() copies by default


def test_fade_then_fold_is_continuous_and_removes():
    model = tiny_htnet()
    x = calib(n=24)
    y = np.arange(24) % 3
    name = "levels.0.blocks.0.attn"
    n0 = sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    hist = finetune(model, x.numpy(), y, FinetuneConfig(epochs=2, fade_epochs=1, batch_size=8), fade=[name])
    assert [h["lambda"] for h in hist] == [0.0, None]  # λ reached 0 at the end of epoch 1, then folded
    assert name not in [n for n, _ in model.attention_layers()]
    assert sum(p.numel() for p in model.parameters()) < n0
    # folding at λ = 0 is the same function
    m2 = tiny_htnet()
    m2.set_attention_lambda(name, 0.0)
    ref = m2(x)
    m2.replace_attention(name, None, skip_scale=2.0)
    torch.testing.assert_close(m2(x), ref)
    with pytest.raises(ValueError, match="fade_epochs=3 exceeds"):
        FinetuneConfig(epochs=2, fade_epochs=3)


def test_esaat_model_deterministic():
    x = calib(n=30).numpy()
    y = np.arange(30) % 3
    cfg = ESAATConfig(remove=1, calib_size=20, finetune=FinetuneConfig(epochs=2, fade_epochs=1, batch_size=16))
    outs = []
    for _ in range(2):
        m, rec = esaat_model(tiny_htnet(), x, y, cfg, fold_index=3)
        outs.append((m.state_dict(), rec))
    (sd_a, ra), (sd_b, rb) = outs
    assert ra["removed"] == rb["removed"] and ra["selection"]["layer_te"] == rb["selection"]["layer_te"]
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert len(ra["converted"]) == 3 and ra["removed"][0] not in ra["converted"]


def test_generated_samples_join_finetuning_but_not_class_weights_or_calibration(monkeypatch):
    """esaat_model with DDPM samples: calibration draws from the real samples only, the fine-tuning set is
    real + generated, and the balanced class weights are those of the real labels."""
    import sys

    ft_mod = sys.modules["mer.esaat.finetune"]  # the package exports a function of the same name
    seen = []
    real_weights = ft_mod._class_weights
    monkeypatch.setattr(ft_mod, "_class_weights", lambda y, *a: seen.append(np.asarray(y)) or real_weights(y, *a))
    x = calib(n=30).numpy()
    y = np.array([0] * 20 + [1] * 6 + [2] * 4)
    x_gen, y_gen = calib(n=24, seed=5).numpy(), np.array([1] * 14 + [2] * 10)  # tops classes up to 20
    cfg = ESAATConfig(remove=1, calib_size=20, finetune=FinetuneConfig(epochs=1, fade_epochs=0, batch_size=16))
    _, rec = esaat_model(tiny_htnet(), x, y, cfg, fold_index=0, x_gen=x_gen, y_gen=y_gen)
    assert rec["n_real"] == 30 and rec["n_generated"] == 24
    assert len(seen) == 1 and np.array_equal(seen[0], y)  # not the balanced 20/20/20
    assert rec["calibration_size"] == 20
    with pytest.raises(ValueError, match="n_real=0"):
        finetune(tiny_htnet(), x, y, FinetuneConfig(epochs=1, fade_epochs=0), n_real=0)


def test_augment_options_are_checked():
    with pytest.raises(ValueError, match="--augment ddpm"):
        ESAATConfig(remove=1, ddpm={"train_steps": 3})
    with pytest.raises(ValueError, match="DDPMConfig"):
        ESAATConfig(remove=1, augment="ddpm", ddpm={"steps": 3})
    with pytest.raises(ValueError, match="augment_ratio"):
        ESAATConfig(remove=1, augment="ddpm", augment_ratio="lots")
    with pytest.raises(ValueError, match="augment must be"):
        ESAATConfig(remove=1, augment="gan")
    assert ESAATConfig(remove=2, augment="ddpm").tag() == "k2-ddpm"


def test_esaat_on_vit():
    torch.manual_seed(0)
    model = vit_test(depth=4)
    x = calib(n=40).numpy()
    y = np.arange(40) % 3
    n0 = sum(p.numel() for p in model.parameters())
    cfg = ESAATConfig(remove=2, convert=False, finetune=FinetuneConfig(epochs=2, fade_epochs=1, batch_size=16))
    m, rec = esaat_model(model, x, y, cfg)
    assert len(m.attention_layers()) == 2 and sum(p.numel() for p in m.parameters()) < n0
    assert torch.isfinite(m(torch.from_numpy(x[:4]))).all()
    assert rec["history"][-1]["epoch"] == 2


def test_agreement():
    a = {"l0": 0.1, "l1": -0.5, "l2": 2.0}
    same = ranking_agreement([a, dict(a), dict(a)])
    assert same["spearman_mean"] == pytest.approx(1.0) and same["kendall_w"] == pytest.approx(1.0)
    rev = ranking_agreement([{"l0": 1.0, "l1": 2.0, "l2": 3.0}, {"l0": 3.0, "l1": 2.0, "l2": 1.0}])
    assert rev["spearman_mean"] == pytest.approx(-1.0) and rev["kendall_w"] == pytest.approx(0.0)
    s = selection_agreement([["l0"], ["l0"], ["l1"]])
    assert s["modal_set"] == ["l0"] and s["modal_share"] == pytest.approx(2 / 3)
    assert s["frequency"] == {"l0": 2, "l1": 1}

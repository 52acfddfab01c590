"""create_model / list_models and the `mer models` command."""

import json

import pytest

from mer.cli import main
from mer.models import HTNetConfig, create_model, list_models, variant_config


def test_registry_lists_the_required_variants():
    names = list_models()
    for n in ("htnet_original", "htnet_small", "htnet_small_lape", "htnet_small_lape_agent", "htnet_tiny"):
        assert n in names
    assert list_models("htnet_tiny*") == [n for n in names if n.startswith("htnet_tiny")]


def test_create_model_overrides_and_errors():
    m = create_model("htnet_tiny", num_classes=5, dropout=0.2)
    assert m.cfg.num_classes == 5 and m.head.out_features == 5 and m.cfg.dropout == 0.2
    assert isinstance(variant_config("htnet_small_lape_agent"), HTNetConfig)
    assert variant_config("htnet_small_lape_agent").attn == "agent"
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(TypeError, match="unknown HTNet options"):
        create_model("htnet_tiny", depth=3)


def test_mer_models_json_and_table(capsys):
    assert main(["models", "--models", "htnet_tiny", "--json", "--reps", "1", "--batch", "4"]) == 0
    rep = json.loads(capsys.readouterr().out)
    (row,) = rep["models"]
    assert row["name"] == "htnet_tiny"
    assert row["params"] == sum(p.numel() for p in create_model("htnet_tiny").parameters())
    assert row["macs"] * 2 == row["flops"] > 0
    assert row["latency_ms_b1"] > 0 and row["latency_ms_b4"] > 0 and row["train_step_ms_b4"] > 0
    assert [r["tokens"] for r in row["attention"]] == [16, 16]
    assert main(["models", "--models", "htnet_small*", "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "htnet_small_lape_agent" in out and "L0 49x4, L1 49x1" in out
    with pytest.raises(SystemExit, match="no variant matches"):
        main(["models", "--models", "zzz*", "--no-latency"])


def test_flops_match_a_hand_count():
    """htnet_tiny at batch 1, counted by hand (2 FLOPs per multiply-add of every Linear/conv/matmul)."""
    import torch

    from mer.models.profile import count_flops

    m = create_model("htnet_tiny")  # 16px, p2 -> 8x8 tokens, dim 16/32, heads 2/4, depth 1/1, mlp x2
    macs = 3 * 4 * 16 * 64  # patch embedding: 64 tokens, 12 -> 16
    for C, N, blocks in ((16, 16, 4), (32, 16, 1)):
        T = N * blocks
        macs += T * (3 * C * C + C * C + 2 * (2 * C * C))  # qkv, proj, mlp (x2)
        macs += blocks * 2 * N * N * C  # q kᵀ and P v over all heads
    macs += 9 * 16 * 32 * 64  # aggregate conv 3x3 on the 8x8 map
    macs += 32 * 3  # head
    assert count_flops(m, torch.randn(1, 3, 16, 16))["macs"] == macs


def test_config_survives_a_json_round_trip():
    """The trainer saves model.cfg as JSON: rebuilding from it gives the same architecture and weights load."""
    import torch

    from mer.models import HTNet

    m = create_model("htnet_tiny_lape_agent", dropout=0.1)
    cfg = HTNetConfig(**json.loads(json.dumps(m.cfg.to_dict())))
    m2 = HTNet(cfg)
    m2.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(m.eval()(x), m2.eval()(x))

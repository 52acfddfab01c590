"""scripts/profile_batched_step.py: its unfold convolution is nn.Conv2d (also vmapped over per-fold
weights, the case it is measured for), and a tiny CPU run writes every variant's timings."""

import json

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (7, 7, 0), (3, 2, 1), (2, 1, 0)])
def test_unfold_conv_is_conv2d_also_under_vmap(load_script, kernel, stride, padding):
    mod = load_script("profile_batched_step")
    torch.manual_seed(0)
    convs = [nn.Conv2d(4, 5, kernel, stride=stride, padding=padding).double() for _ in range(3)]
    x = torch.randn(3, 2, 4, 9, 9, dtype=torch.float64)
    params, _ = stack_module_state(convs)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    outs, grads = [], []
    for unfold in (False, True):
        base = nn.Conv2d(4, 5, kernel, stride=stride, padding=padding).double()
        if unfold:
            assert mod.unfold_convs(base) == 1 and isinstance(base, mod.UnfoldConv2d)
        out = vmap(lambda p, xi, b=base: functional_call(b, p, (xi,)))(params, x)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), list(params.values())))
    torch.testing.assert_close(outs[1], outs[0])
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b)


def test_a_tiny_cpu_profile_writes_every_variant(load_script, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    mod = load_script("profile_batched_step")
    argv = ["--device", "cpu", "--model", "htnet_small", "--folds", "2", "--batch", "3", "--steps", "1"]
    assert torch.get_float32_matmul_precision() == "highest"
    assert mod.main([*argv, "--warmup", "1", "--gemm", "2,8,16,32", "--out", str(tmp_path)]) == 0
    assert torch.get_float32_matmul_precision() == "highest"  # the script's "high" does not leak out
    (js,) = tmp_path.glob("*-batched_step.json")
    res = json.loads(js.read_text())
    assert list(res["variants"]) == list(mod.VARIANTS)
    gp = res["gemm_probe"]
    assert gp["flop"] == 2 * 2 * 8 * 16 * 32 and gp["settings"]["float32_matmul_precision"] == "high"
    assert all(gp[f"{op}_tflops"] > 0 for op in ("bmm_highest", "bmm_high", "bmm_bf16", "mm_highest", "mm_high"))
    for v in res["variants"].values():
        assert 0 < v["forward"] + v["backward"] + v["adam"] <= v["step"] * 1.05
    assert res["variants"]["base"]["step_flop"] > 0
    dtypes = {v: res["variants"][v]["operand_dtypes"] for v in ("base", "bf16")}
    assert set(dtypes["base"]["bmm"]) == {"float32"} and "convolution" in dtypes["base"]
    assert dtypes["bf16"]["bmm"].get("bfloat16", 0) > 0  # autocast reaches the stacked products
    # the CPU build runs F.scaled_dot_product_attention once per fold under vmap; written out it does not
    assert res["variants"]["explicit_attn"]["vmap_fallbacks"] == []
    md = js.with_suffix(".md").read_text()
    assert "| unfold |" in md and "| highest |" in md and "vmap fallbacks" in md and "GEMM probe, 2 x (8 x 16)" in md
    assert "- base: " in md and "- bf16: " in md and "bfloat16" in md  # the dtype lines; bf16 differs from base
    with pytest.raises(SystemExit):
        mod.main([*argv, "--variants", "foreach,nope"])
    with pytest.raises(SystemExit):
        mod.main([*argv, "--gemm", "17,256,1024"])


def test_a_failing_variant_is_recorded_and_the_others_still_written(load_script, tmp_path, monkeypatch):
    """The first lease lost every result to one variant's out-of-memory error."""
    monkeypatch.delenv("OUT", raising=False)
    mod = load_script("profile_batched_step")
    measure = mod.measure

    def fail_unfold(args, dev, variant):
        if variant == "unfold":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 76.50 GiB.")
        return measure(args, dev, variant)

    monkeypatch.setattr(mod, "measure", fail_unfold)
    argv = ["--device", "cpu", "--model", "htnet_small", "--folds", "2", "--batch", "2", "--steps", "1"]
    args = [*argv, "--warmup", "0", "--gemm", "none", "--variants", "base,unfold,foreach", "--out", str(tmp_path)]
    assert mod.main(args) == 0
    res = json.loads(next(tmp_path.glob("*-batched_step.json")).read_text())
    assert list(res["variants"]) == ["base", "foreach"]
    assert "76.50 GiB" in res["failed"]["unfold"]
    assert "| unfold | failed: OutOfMemoryError" in next(tmp_path.glob("*-batched_step.md")).read_text()

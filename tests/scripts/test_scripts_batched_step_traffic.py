"""scripts/batched_step_traffic.py: the meta-device count of one batched step's memory traffic."""

import json


def test_traffic_of_a_small_batched_step(load_script, tmp_path):
    mod = load_script("batched_step_traffic")
    assert mod.main(["--model", "htnet_small", "--folds", "2", "--batch", "3", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "batched_step_traffic-htnet_small-2x3.json").read_text())
    assert res["bytes_total"] == res["bytes_matrix"] + res["bytes_other"] > 0
    assert res["bytes_matrix"] > 0 and res["bytes_other"] > 0
    assert res["bytes_adam"] == 7 * 4 * res["n_params"] * 2
    assert sum(v["bytes"] for v in res["ops"].values()) == res["bytes_total"]
    assert not {"view", "permute", "empty", "new_empty_strided"} & set(res["ops"])  # no bytes move there
    # the stacked weights are read by the forward's batched products at least once per fold
    assert res["ops"]["bmm"]["bytes"] > 4 * res["n_params"] * 2 * 0.5
    # twice the batch: the activations' traffic grows, the weights' does not
    big = mod.count("htnet_small", 2, 6)
    assert res["bytes_other"] < big["bytes_other"] < 2 * res["bytes_other"] + 1e6
    md = (tmp_path / "batched_step_traffic-htnet_small-2x3.md").read_text()
    assert "| bmm |" in md and "Batched matrix products:" in md
    # the products' FLOPs by shape add up, and equal torch.utils.flop_counter's count of the same step
    assert res["flop_bmm"] == sum(e["flop"] for e in res["bmm_shapes"]) == res["flop_bmm_torch"] > 0
    assert sum(e["calls"] for e in res["bmm_shapes"]) == res["ops"]["bmm"]["calls"]


def test_the_transposed_stack_removes_the_weight_gradient_copies(load_script):
    """mer.train.batched stacks Linear weights transposed: the per-step copies of their gradients into the
    parameters' layout (the old layout's largest non-matrix traffic) are gone, nothing else grows."""
    mod = load_script("batched_step_traffic")
    new, old = mod.count("htnet_small", 2, 3), mod.count("htnet_small", 2, 3, transposed=False)
    copies = old["ops"]["copy_"]
    assert copies["calls"] >= 10 and copies["bytes"] > 0.5 * (new["bytes_adam"] / 7 / 2)  # ~ all weights
    assert new["ops"].get("copy_", {"bytes": 0})["bytes"] < 0.05 * copies["bytes"]
    assert new["bytes_matrix"] == old["bytes_matrix"]
    assert new["bytes_other"] < old["bytes_other"] - 0.9 * copies["bytes"]

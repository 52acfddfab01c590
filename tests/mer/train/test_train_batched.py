"""mer.train.batched: several folds in one vmapped step give what each fold gives alone (the serial
path, mer.train.loop, is the reference); its Adam and loss against torch's."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mer.train import run_training
from mer.train.batched import StackedAdam, cross_entropy_rows


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_stacked_adam_is_torch_adam_per_fold(weight_decay, fused):
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(4, 3, generator=g) for _ in range(3)]
    ref = [torch.nn.Parameter(p.clone()) for p in init]
    opts = [torch.optim.Adam([p], lr=1e-2, weight_decay=weight_decay) for p in ref]
    stacked = {"w": torch.stack(init).requires_grad_()}
    adam = StackedAdam(stacked, lr=1e-2, weight_decay=weight_decay, fused=fused)
    # fold 1 skips a step (its own step count), catches up (together again, from the moments the masked
    # path left), then fold 2 skips one
    schedule = [[1, 1, 1], [1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
    for on in schedule:
        grads = torch.randn(3, 4, 3, generator=g) * torch.tensor([1e-3, 1.0, 30.0])[:, None, None]
        for f in range(3):
            if on[f]:
                ref[f].grad = grads[f].clone()
                opts[f].step()
        stacked["w"].grad = grads.clone()
        adam.step(torch.tensor(on, dtype=torch.bool))
    for f in range(3):
        torch.testing.assert_close(stacked["w"][f].detach(), ref[f].detach(), rtol=1e-6, atol=1e-7)
        state = adam.fold_state(f, ["w"])[0]
        assert float(state["step"]) == float(opts[f].state[ref[f]]["step"])
        torch.testing.assert_close(state["exp_avg_sq"], opts[f].state[ref[f]]["exp_avg_sq"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_padded_cross_entropy_is_f_cross_entropy(weighted, smoothing):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    valid = torch.tensor([1, 1, 0, 1, 1, 0, 1], dtype=torch.float64)  # rows 2 and 5 are padding
    w = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64) if weighted else None
    got = cross_entropy_rows(logits, y, valid, w, smoothing)
    keep = valid.bool()
    ref = F.cross_entropy(logits[keep], y[keep], weight=w, label_smoothing=smoothing)
    torch.testing.assert_close(got, ref)
    (g_got,) = torch.autograd.grad(got, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_got, g_ref)
    assert not g_got[~keep].any()  # padding gets no gradient


def _probs(run, name: str = "predictions.csv") -> np.ndarray:
    lines = (Path(run) / name).read_text().splitlines()[1:]
    return np.array([[float(v) for v in line.split(",")[6:]] for line in lines])


@pytest.mark.slow
@pytest.mark.parametrize(
    "selection,save_models", [("fixed", True), ("val", True), ("oracle-release", True), ("oracle-release", False)]
)
def test_folds_trained_together_equal_folds_trained_alone(make_cfg, tmp_path, one_thread, selection, save_models):
    """kfold:4 of 6 subjects: training sets of 12 and 15 samples, batch 4 -> 3 and 4 steps per epoch, so a
    fold sits out a step of every epoch; selection 'val' also stops folds at different epochs. Without
    saved models the batched path predicts from the stacked weights without building each fold's model."""
    kw = dict(protocol="kfold:4", batch_size=4, epochs=3, selection=selection, val_fraction=0.2, patience=1)
    alone = run_training(make_cfg(out=str(tmp_path / "alone"), **kw))
    together = run_training(make_cfg(out=str(tmp_path / "together"), fold_batch=4, save_models=save_models, **kw))
    np.testing.assert_allclose(_probs(tmp_path / "together"), _probs(tmp_path / "alone"), atol=2e-5)
    assert together["scores"] == alone["scores"]
    for d in sorted((tmp_path / "alone" / "folds").iterdir()):
        a = json.loads((d / "history.json").read_text())
        b = json.loads((tmp_path / "together" / "folds" / d.name / "history.json").read_text())
        assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
        np.testing.assert_allclose([r["train_loss"] for r in b], [r["train_loss"] for r in a], rtol=1e-4)
        ra = json.loads((d / "result.json").read_text())
        rb = json.loads((tmp_path / "together" / "folds" / d.name / "result.json").read_text())
        assert rb["epoch_selected"] == ra["epoch_selected"]
        assert (tmp_path / "together" / "folds" / d.name / "model.pt").exists() == save_models
        if selection == "oracle-release":
            name, other = "predictions_last_epoch.csv", tmp_path / "together" / "folds" / d.name
            np.testing.assert_allclose(_probs(other, name), _probs(d, name), atol=2e-5)
    sizes = {
        len(json.loads((d / "result.json").read_text())["split"]["fit"])
        for d in (tmp_path / "alone" / "folds").iterdir()
    }
    assert len(sizes) > 1  # the folds really had different training-set sizes


def _kill_at(epoch: int, index: int):
    def kill(task, state):
        if state.epoch == epoch and task.index == index:
            raise KeyboardInterrupt

    return kill


@pytest.mark.slow
def test_a_killed_batched_run_resumes_to_the_same_result(make_cfg, tmp_path, one_thread):
    """Killed after epoch 2 of 4 (every fold has last.pt and last.prev.pt): the rerun resumes each fold
    through mer.train.recovery, restores the checkpoint's RNG (dropout 0.2 draws from it, so a fresh seed
    would change the result) and gives the undisturbed run's predictions; no checkpoint is left behind."""
    kw = dict(protocol="kfold:3", epochs=4, fold_batch=3, model_kwargs={"dropout": 0.2})
    ref = run_training(make_cfg(out=str(tmp_path / "ref"), **kw))
    cfg = make_cfg(out=str(tmp_path / "killed"), **kw)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, on_epoch_end=_kill_at(2, 2))
    folds = tmp_path / "killed" / "folds"
    assert len(list(folds.glob("*/last.pt"))) == 3 and len(list(folds.glob("*/last.prev.pt"))) == 3
    m = run_training(cfg)
    assert m["scores"] == ref["scores"]
    np.testing.assert_array_equal(_probs(cfg.out), _probs(tmp_path / "ref"))
    assert not list(folds.glob("*/last*.pt"))  # a finished fold keeps neither checkpoint


@pytest.mark.slow
def test_a_batched_fold_with_a_damaged_checkpoint_resumes_from_the_previous_one(make_cfg, tmp_path, one_thread):
    """One fold's last.pt damaged after a kill: that fold goes on from last.prev.pt (one epoch behind the
    others, named in a warning and in events.log), the others from last.pt; every fold ends where the
    undisturbed run ends (up to float rounding: the lagging fold makes StackedAdam take its masked path)."""
    from mer.train.recovery import RecoveryWarning

    kw = dict(protocol="kfold:3", epochs=4, fold_batch=3)
    run_training(make_cfg(out=str(tmp_path / "ref"), **kw))
    cfg = make_cfg(out=str(tmp_path / "killed"), **kw)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, on_epoch_end=_kill_at(2, 2))
    damaged = sorted((tmp_path / "killed" / "folds").glob("*/last.pt"))[1]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.warns(
        RecoveryWarning,
        match=r"last\.pt .*does not load.*resumes from the previous checkpoint "
        r"last\.prev\.pt \(epoch 1\)",
    ):
        run_training(cfg)
    assert (damaged.parent / "last.pt.damaged").exists()
    assert "last.prev.pt (epoch 1)" in (tmp_path / "killed" / "events.log").read_text()
    np.testing.assert_allclose(_probs(cfg.out), _probs(tmp_path / "ref"), atol=2e-5)
    hist = json.loads((damaged.parent / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_batched_checkpoint_is_the_one_alone_training_writes(make_cfg, tmp_path, one_thread):
    """last.pt is shared with the one-at-a-time path: after 2 epochs, fold 0's checkpoint from the batched
    run holds the weights, Adam moments and step of the same fold trained alone, each tensor in the
    model's own layout (the stack keeps Linear weights transposed). The matrices must agree to rounding; a
    parameter whose gradient is ~0 (a position embedding here) may differ by up to a few Adam steps (lr):
    Adam divides the gradient by its own magnitude, so rounding noise becomes a full-size step."""
    kw = dict(protocol="kfold:3", epochs=4)
    ck = {}
    for name, fold_batch in (("alone", 1), ("together", 3)):
        cfg = make_cfg(out=str(tmp_path / name), fold_batch=fold_batch, **kw)
        with pytest.raises(KeyboardInterrupt):
            run_training(cfg, on_epoch_end=_kill_at(2, 0))
        (path,) = sorted((tmp_path / name / "folds").glob("000-*/last.pt"))
        ck[name] = torch.load(path, weights_only=False)
    a, b = ck["alone"], ck["together"]
    assert a["epoch"] == b["epoch"] == 2
    lr = make_cfg().lr
    for k, v in a["state_dict"].items():
        assert b["state_dict"][k].shape == v.shape and b["state_dict"][k].is_contiguous(), k
        tight = v.dim() == 2  # Linear weights (and any other matrix): the stack's transposed ones included
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-4, atol=1e-6 if tight else 2 * lr, msg=k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert float(sb[i]["step"]) == float(sa[i]["step"]) >= 2  # 2 epochs of at least one minibatch
        for m in ("exp_avg", "exp_avg_sq"):
            assert sb[i][m].shape == sa[i][m].shape
            torch.testing.assert_close(sb[i][m], sa[i][m], rtol=1e-3, atol=1e-9)

"""mer.train.loop's pieces: batch order (shuffled or the release's unshuffled label order), class weights from
real labels only, the selection rules (validation keeps the first best epoch, oracle-release the latest)."""

import numpy as np

from mer.train import TrainConfig
from mer.train.inputs import IndexLog
from mer.train.loop import FoldArrays, TrainState, end_epoch, epoch_order, fold_class_weights, is_better


def test_epoch_order_shuffles_per_epoch_or_groups_by_label():
    y = np.array([2, 0, 1, 0, 2, 1, 0])
    cfg = TrainConfig()
    a, b = epoch_order(y, cfg, (0, 3), 0), epoch_order(y, cfg, (0, 3), 1)
    assert sorted(a) == list(range(7)) and not np.array_equal(a, b)
    assert np.array_equal(a, epoch_order(y, cfg, (0, 3), 0))  # a resumed epoch sees the same order
    fixed = epoch_order(y, cfg.replace(shuffle=False), (0, 3), 5)
    assert fixed.tolist() == [1, 3, 6, 2, 5, 0, 4]  # labels 0,0,0,1,1,2,2, stable within a label
    assert np.array_equal(fixed, epoch_order(y, cfg.replace(shuffle=False), (0, 3), 0))


def test_class_weights_come_from_the_real_samples_only():
    y_real = np.array([0] * 6 + [1] * 2 + [2] * 2)
    y_fit = np.concatenate([y_real, [1] * 4, [2] * 4])  # DDPM samples balancing the classes
    data = FoldArrays(
        fit=np.arange(10),
        val=np.zeros(0, np.int64),
        test=np.zeros(0, np.int64),
        x_fit=None,
        y_fit=y_fit,
        x_val=None,
        y_val=None,
        x_sel=None,
        y_sel=None,
        x_test=None,
        mean=None,
        std=None,
        n_real=10,
        n_generated=8,
        log=IndexLog(),
    )
    w = fold_class_weights(data, TrainConfig())
    np.testing.assert_allclose(w.numpy(), [10 / 18, 10 / 6, 10 / 6], rtol=1e-6)
    assert fold_class_weights(data, TrainConfig(class_weights="none")) is None


def test_selection_rules():
    val, oracle = TrainConfig(selection="val", patience=2), TrainConfig(selection="oracle-release")
    best = {"epoch": 3, "score": [0.5]}
    assert not is_better((0.5,), best, val) and is_better((0.6,), best, val)
    assert is_better((0.5,), best, oracle) and not is_better((0.4,), best, oracle)  # ties: the latest
    state = TrainState()
    for epoch, score in enumerate([(0.2,), (0.5,), (0.5,), (0.4,)], 1):
        state.epoch = epoch
        end_epoch(state, {"epoch": epoch}, score, val)
    assert state.best["epoch"] == 2 and state.stopped  # 2 epochs without a better score
    state = TrainState()
    for epoch, score in enumerate([(0.2,), (0.5,), (0.5,), (0.4,)], 1):
        state.epoch = epoch
        end_epoch(state, {"epoch": epoch}, score, oracle)
    assert state.best["epoch"] == 3 and not state.stopped

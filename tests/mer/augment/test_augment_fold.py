"""augment_fold: sees only the arrays passed in, balances classes, caches per fold and data."""

import json

import numpy as np
import pytest
import torch

import mer.augment.fold as fold
from mer.augment import ArrayBatches, ChannelScaler, DDPMConfig, augment_fold, class_targets

TINY = DDPMConfig(
    base_channels=4,
    channel_mults=(1, 2),
    emb_dim=16,
    timesteps=50,
    train_steps=12,
    batch_size=8,
    sample_steps=4,
    progress=False,
)
SENTINEL = 12345.0


def make_fold(seed=0, counts=(10, 5, 3), size=8):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    x = (rng.normal(size=(len(y), 3, size, size)) + y[:, None, None, None]).astype(np.float32)
    return x, y


class RecordingBatches(ArrayBatches):
    """ArrayBatches that records the arrays it was built on and every batch it hands to the trainer."""

    instances: list = []

    def __init__(self, x, y, batch_size, seed):
        super().__init__(x, y, batch_size, seed)
        self.seen_x, self.seen_y = [], []
        RecordingBatches.instances.append(self)

    def batch(self, idx):
        xb, yb = super().batch(idx)
        self.seen_x.append(xb.numpy().copy())
        self.seen_y.append(yb.numpy().copy())
        return xb, yb


def test_ddpm_trains_on_exactly_the_passed_arrays(monkeypatch, tmp_path):
    x_all, y_all = make_fold(counts=(10, 6, 4))
    held_out = np.array([2, 13, 19])  # one per class, the "test subject"
    x_all[held_out] = SENTINEL
    train = np.setdiff1d(np.arange(len(y_all)), held_out)
    x_train, y_train = x_all[train], y_all[train]
    RecordingBatches.instances = []
    monkeypatch.setattr(fold, "ArrayBatches", RecordingBatches)
    fitted = []
    real_fit = fold.ChannelScaler.fit
    monkeypatch.setattr(fold.ChannelScaler, "fit", classmethod(lambda cls, x: fitted.append(x.copy()) or real_fit(x)))
    cfg = DDPMConfig(**{**TINY.to_dict(), "train_steps": 30, "channel_mults": (1, 2)})
    x_gen, y_gen = augment_fold(x_train, y_train, cfg=cfg, cache_dir=tmp_path, fold_key="leak", seed=0)

    (loader,) = RecordingBatches.instances
    seen_x = np.concatenate(loader.seen_x)
    seen_y = np.concatenate(loader.seen_y)
    assert len(seen_x) == 30 * 8  # train_steps × batch_size rows went through the trainer
    assert not np.any(seen_x == SENTINEL), "a held-out value reached the DDPM"
    # every row iterated is a row of x_train (bit for bit, with its label), and all of x_train was used
    train_rows = {r.tobytes(): int(lbl) for r, lbl in zip(x_train, y_train, strict=True)}
    assert all(
        r.tobytes() in train_rows and train_rows[r.tobytes()] == lbl for r, lbl in zip(seen_x, seen_y, strict=True)
    )
    assert {r.tobytes() for r in seen_x} == set(train_rows)
    # the standardisation was fitted on exactly the passed array
    assert len(fitted) == 1 and np.array_equal(fitted[0], x_train)
    # the cached model records a scaler equal to x_train's own statistics
    (model_path,) = tmp_path.glob("leak/*/model.pt")
    ck = torch.load(model_path, weights_only=False)
    np.testing.assert_allclose(ck["scaler_mean"], x_train.astype(np.float64).mean((0, 2, 3)))
    assert ck["rows_seen"] == 30 * 8
    # the class prior (mean image per class) is that of x_train's own classes, in standardised units
    mean, std = np.array(ck["scaler_mean"])[None, :, None, None], np.array(ck["scaler_std"])[None, :, None, None]
    z = (x_train.astype(np.float64) - mean) / std
    for c in range(3):
        np.testing.assert_allclose(ck["prior_mean"][c].numpy(), z[y_train == c].mean(0), rtol=1e-4, atol=1e-5)
    assert not np.any(x_gen == SENTINEL)


def test_balance_shapes_units_and_labels(tmp_path):
    x, y = make_fold(counts=(10, 5, 3))
    x = x * 50.0 + 100.0  # caller's units are not unit-variance
    xg, yg = augment_fold(x, y.astype(np.int32), cfg=TINY, cache_dir=None, fold_key="f", seed=0)
    assert xg.dtype == np.float32 and xg.shape == (5 + 7, 3, 8, 8)
    assert yg.dtype == np.int32 and np.bincount(yg, minlength=3).tolist() == [0, 5, 7]
    assert np.isfinite(xg).all()
    # returned in the caller's units: within the (margin-widened) per-channel range of the training data
    lo, hi = x.min((0, 2, 3)), x.max((0, 2, 3))
    pad = 0.11 * (hi - lo)
    assert np.all(xg.min((0, 2, 3)) >= lo - pad) and np.all(xg.max((0, 2, 3)) <= hi + pad)


def test_class_targets():
    y = np.array([0] * 10 + [1] * 5 + [2] * 3)
    assert class_targets(y, "balance") == {1: 5, 2: 7}
    assert class_targets(y, 1.0) == {0: 10, 1: 5, 2: 3}
    t = class_targets(y, 0.5)
    assert sum(t.values()) == 9 and t[0] == 5
    assert class_targets(np.array([3, 3, 5, 5]), "balance") == {}
    for bad in (-1.0, "lots", float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            class_targets(y, bad)


def test_already_balanced_returns_empty_without_training(monkeypatch, tmp_path):
    monkeypatch.setattr(fold, "train_ddpm", lambda *a, **k: pytest.fail("must not train"))
    x, y = make_fold(counts=(4, 4))
    xg, yg = augment_fold(x, y, cfg=TINY, cache_dir=tmp_path, fold_key="f", seed=0)
    assert xg.shape == (0, 3, 8, 8) and yg.shape == (0,)


def count_training(monkeypatch):
    calls = []
    real = fold.train_ddpm

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(fold, "train_ddpm", counting)
    return calls


def test_cache_hit_on_rerun_and_miss_on_change(monkeypatch, tmp_path):
    calls = count_training(monkeypatch)
    x, y = make_fold()
    a = augment_fold(x, y, cfg=TINY, cache_dir=tmp_path, fold_key="sub01", seed=0)
    assert len(calls) == 1
    (folder,) = (tmp_path / "sub01").iterdir()
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(mtimes) == {"model.pt", "meta.json", "samples-balance.npz"}
    assert not list(folder.glob("*.tmp")), "temporary files must be renamed away"

    b = augment_fold(x, y, cfg=TINY, cache_dir=tmp_path, fold_key="sub01", seed=0)
    assert len(calls) == 1, "rerun must not retrain"
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes, "rerun must not rewrite"

    # another ratio reuses the trained model (no retraining) and writes its own samples file
    c = augment_fold(x, y, cfg=TINY, cache_dir=tmp_path, fold_key="sub01", seed=0, ratio=0.5)
    assert len(calls) == 1 and len(c[1]) == 9
    assert (folder / "samples-r0p5.npz").exists()

    # any change of data, labels, config or seed is a miss (retrain, new folder)
    x2 = x.copy()
    x2[0, 0, 0, 0] += 1e-3
    y2 = y.copy()
    y2[[0, -1]] = y2[[-1, 0]]
    augment_fold(x2, y, cfg=TINY, cache_dir=tmp_path, fold_key="sub01", seed=0)
    augment_fold(x, y2, cfg=TINY, cache_dir=tmp_path, fold_key="sub01", seed=0)
    augment_fold(
        x,
        y,
        cfg=DDPMConfig(**{**TINY.to_dict(), "channel_mults": (1, 2), "lr": 1e-3}),
        cache_dir=tmp_path,
        fold_key="sub01",
        seed=0,
    )
    augment_fold(x, y, cfg=TINY, cache_dir=tmp_path, fold_key="sub01", seed=1)
    assert len(calls) == 5
    assert len(list((tmp_path / "sub01").iterdir())) == 5
    # display-only settings are not part of the key
    augment_fold(
        x,
        y,
        cfg=DDPMConfig(**{**TINY.to_dict(), "channel_mults": (1, 2), "progress": True}),
        cache_dir=tmp_path,
        fold_key="sub01",
        seed=0,
    )
    assert len(calls) == 5
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["class_counts"] == {"0": 10, "1": 5, "2": 3} and meta["seed"] == 0


def test_same_seed_same_samples_without_cache(monkeypatch):
    x, y = make_fold()
    a = augment_fold(x, y, cfg=TINY, cache_dir=None, fold_key="f", seed=3)
    b = augment_fold(x, y, cfg=TINY, cache_dir=None, fold_key="f", seed=3)
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x, y: (x[0], y), r"\(M, C, H, W\)"),
        (lambda x, y: (x.astype(np.int64), y), "float"),
        (lambda x, y: (x, y[:-1]), "y_train must be"),
        (lambda x, y: (x, y + 0.5), "integer class labels"),
        (lambda x, y: (x, y - 5), ">= 0"),
        (lambda x, y: (np.where(np.arange(len(x))[:, None, None, None] == 1, np.nan, x).astype(np.float32), y), "NaN"),
        (lambda x, y: (x[:0], y[:0]), "empty"),
    ],
)
def test_bad_inputs_are_explained(mutate, match):
    x, y = make_fold()
    xb, yb = mutate(x, y)
    with pytest.raises(ValueError, match=match):
        augment_fold(xb, yb, cfg=TINY, cache_dir=None, fold_key="f", seed=0)


def test_bad_fold_key_and_cfg(tmp_path):
    x, y = make_fold()
    for key in ("../escape", "a/b", ""):
        with pytest.raises(ValueError, match="fold_key"):
            augment_fold(x, y, cfg=TINY, cache_dir=tmp_path, fold_key=key, seed=0)
    with pytest.raises(TypeError, match="DDPMConfig"):
        augment_fold(x, y, cfg={"lr": 1}, cache_dir=None, fold_key="f", seed=0)


def test_channel_scaler_round_trip():
    x = np.random.default_rng(0).normal(3, 2, size=(5, 3, 4, 4)).astype(np.float32)
    x[:, 2] = 7.0  # constant channel stays finite
    s = ChannelScaler.fit(x)
    z = s.transform(torch.from_numpy(x))
    assert torch.isfinite(z).all()
    torch.testing.assert_close(s.inverse(z), torch.from_numpy(x))

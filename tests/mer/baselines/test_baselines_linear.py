"""The linear floor (mer.baselines.linear): finds a linear signal, sits at chance on shuffled labels,
never lets a held-out subject into a fold's standardisation or fit, and runs the three protocols."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mer.baselines import linear as lin
from mer.baselines.linear import LinearConfig, linear_floor, parse_protocol, protocol_folds, run_protocol

DATASETS = ("casme2", "samm", "smic")


def make_problem(n_subjects=12, per_subject=12, dim=40, signal=3.0, seed=0):
    """(x (N, 2, 4, 5), y, datasets, subjects): classes differ by `signal` sd along 3 random directions,
    plus a per-subject offset (so LOSO meets unseen subjects) and unit noise."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(3, dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    xs, ys, ds, ss = [], [], [], []
    for s in range(n_subjects):
        offset = rng.normal(scale=0.5, size=dim)
        y = np.arange(per_subject) % 3
        xs.append(signal * dirs[y] + offset + rng.normal(size=(per_subject, dim)))
        ys.append(y)
        ds += [DATASETS[s % 3]] * per_subject
        ss += [f"s{s:02d}"] * per_subject
    return np.concatenate(xs).reshape(-1, 2, 4, 5), np.concatenate(ys), np.array(ds), np.array(ss)


def groups_of(datasets, subjects):
    return np.array([f"{d}/{s}" for d, s in zip(datasets, subjects, strict=True)])


def test_finds_a_linear_signal():
    x, y, ds, ss = make_problem(signal=3.0)
    res = linear_floor(x, y, groups_of(ds, ss), datasets=ds)
    assert res.scores["all"]["uf1"] > 0.9 and res.scores["all"]["uar"] > 0.9
    assert set(res.scores) == {"all", *DATASETS} and res.scores["all"]["n"] == len(y)
    assert len(res.folds) == 12 and (res.fold_of >= 0).all() and res.not_converged == 0
    np.testing.assert_allclose(res.proba.sum(1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(res.pred, res.proba.argmax(1))  # labels (0, 1, 2) in column order


def test_shuffled_labels_are_at_chance():
    x, y, ds, ss = make_problem(n_subjects=15, per_subject=20, signal=3.0)
    rng = np.random.default_rng(1)
    uf1 = []
    for _ in range(3):
        res = linear_floor(x, rng.permutation(y), groups_of(ds, ss), datasets=ds)
        uf1.append(res.scores["all"]["uf1"])
    # 300 samples, 3 balanced classes: chance UF1 ~ 1/3 (sd ~ 0.03 per run)
    assert abs(np.mean(uf1) - 1 / 3) < 0.08, uf1


def test_no_held_out_subject_reaches_the_fit(monkeypatch):
    x, y, ds, ss = make_problem()
    g = groups_of(ds, ss)
    flat = x.reshape(len(x), -1)
    seen = []
    real_fit = lin.fit_fold

    def spy(x_train, y_train, config=None):
        seen.append(x_train.copy())
        return real_fit(x_train, y_train, config)

    monkeypatch.setattr(lin, "fit_fold", spy)
    res = linear_floor(x, y, g, datasets=ds)
    assert len(seen) == len(res.folds)
    for f, xt in zip(res.folds, seen, strict=True):
        # the fit (scaler + model) got exactly the fold's training rows, and none is a test subject's
        np.testing.assert_array_equal(xt, flat[f.train])
        assert not set(g[f.train]) & set(g[f.test])
        assert set(g[f.test]) == {f.name}


def test_fold_model_ignores_held_out_rows():
    x, y, ds, ss = make_problem()
    g = groups_of(ds, ss)
    res = linear_floor(x, y, g, datasets=ds, keep_models=True)
    k = 3
    test = res.folds[k].test
    x2 = x.copy()
    x2[test] = np.random.default_rng(5).normal(scale=100.0, size=x2[test].shape)  # poison the held-out rows
    res2 = linear_floor(x2, y, g, datasets=ds, keep_models=True)
    m1, m2 = res.models[k], res2.models[k]
    np.testing.assert_array_equal(m1[0].mean_, m2[0].mean_)  # standardisation: training rows only
    np.testing.assert_array_equal(m1[0].scale_, m2[0].scale_)
    np.testing.assert_array_equal(m1[-1].coef_, m2[-1].coef_)
    # ... whereas the same rows do move the models of the folds that train on them
    other = (k + 1) % len(res.folds)
    assert not np.array_equal(res.models[other][0].mean_, res2.models[other][0].mean_)


def test_subject_on_both_sides_raises():
    x, y, ds, ss = make_problem()
    g = groups_of(ds, ss)
    idx = np.arange(len(y))
    leaky = [(idx[6:], idx[:12])]  # s00's first half trains, its whole set tests
    with pytest.raises(ValueError, match="both"):
        linear_floor(x, y, g, folds=leaky)
    overlapping = [(idx[24:], idx[:24]), (idx[:12], idx[12:24])]
    with pytest.raises(ValueError, match="disjoint|both"):
        linear_floor(x, y, g, folds=overlapping)


def test_deterministic_solver():
    x, y, ds, ss = make_problem(signal=1.0)
    a = linear_floor(x, y, groups_of(ds, ss))
    b = linear_floor(x, y, groups_of(ds, ss))
    np.testing.assert_array_equal(a.proba, b.proba)


def test_class_absent_from_a_fold_keeps_columns():
    x, y, ds, ss = make_problem(n_subjects=6)
    idx = np.arange(len(y))
    train = idx[(ss != "s00") & (y != 2)]
    res = linear_floor(x, y, folds=[(train, idx[ss == "s00"])])
    t = res.folds[0].test
    assert (res.proba[t, 2] == 0).all() and np.isnan(res.proba[res.fold_of < 0]).all()
    assert set(res.pred[t]) <= {0, 1} and res.scores["all"]["n"] == len(t)


def test_bad_inputs_have_named_errors():
    x, y, ds, ss = make_problem(n_subjects=3)
    with pytest.raises(ValueError, match="groups"):
        linear_floor(x, y)
    with pytest.raises(ValueError, match="labels"):
        linear_floor(x, y + 1, ss)
    with pytest.raises(ValueError, match="NaN"):
        linear_floor(np.full_like(x, np.nan), y, ss)
    with pytest.raises(ValueError, match="C must"):
        LinearConfig(C=0)
    with pytest.raises(ValueError, match="protocol"):
        parse_protocol("kfold:1")


def test_protocol_folds():
    _, y, ds, ss = make_problem()
    lo = protocol_folds(ds, ss, "loso")
    assert len(lo) == 12 and sorted(np.concatenate([f.test for f in lo])) == list(range(len(y)))
    k0, k1 = protocol_folds(ds, ss, "kfold:3", seed=0), protocol_folds(ds, ss, "kfold:3", seed=1)
    assert len(k0) == 3 and [f.test_subjects for f in k0] != [f.test_subjects for f in k1]
    ho = protocol_folds(ds, ss, "holdout-dataset")
    assert [f.name for f in ho] == ["samm+smic->casme2", "casme2+smic->samm", "casme2+samm->smic"]
    for f, d in zip(ho, DATASETS, strict=True):
        assert set(ds[f.test]) == {d} and d not in set(ds[f.train])


def test_run_protocol_repeats_only_seeded_splits():
    x, y, ds, ss = make_problem()
    kf = run_protocol(x, y, ds, ss, "kfold:3", seeds=[0, 1, 2])
    assert kf["seeds"] == [0, 1, 2] and len(kf["runs"]) == 3 and kf["summary"]["all"]["uf1_std"] >= 0
    lo = run_protocol(x, y, ds, ss, "loso", seeds=[0, 1, 2])
    assert lo["seeds"] == [0] and lo["deterministic_folds"] and lo["summary"]["all"]["uf1_std"] == 0
    ho = run_protocol(x, y, ds, ss, "holdout-dataset")
    assert ho["runs"][0]["n_folds"] == 3 and len(ho["pred"]) == len(y) and min(ho["pred"]) >= 0
    json.dumps(kf), json.dumps(lo)  # JSON-ready


def test_cli_writes_json_markdown_predictions(tmp_path, monkeypatch, capsys):
    from mer.baselines import cli, sources

    x, y, ds, ss = make_problem()
    fs = sources.FeatureSet(
        {"flow": x.astype(np.float32)},
        y,
        ds,
        ss,
        np.array([f"c{i}" for i in range(len(y))]),
        {"kind": "htnet-release", "root": "fixture", "reader": "test", "channels": "u, v, strain"},
    )
    monkeypatch.setattr(sources, "release_features", lambda root, inputs, **kw: fs)
    out = tmp_path / "floor"
    rc = cli.main(
        [
            "--htnet-release",
            "fixture",
            "--protocol",
            "loso,kfold:3",
            "--seeds",
            "0,1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    rep = json.loads((out / "linear_floor.json").read_text())
    assert [r["protocol"] for r in rep["results"]] == ["loso", "kfold:3"]
    assert rep["results"][1]["seeds"] == [0, 1] and rep["n"] == len(y) and rep["subjects"] == 12
    md = (out / "linear_floor.md").read_text()
    assert "| flow | loso |" in md and "CASME II UF1 / UAR" in md
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(y)
    assert "UF1" in capsys.readouterr().out
    assert cli.main(["--htnet-release", "fixture", "--protocol", "lopo", "--out", str(out)]) == 2
    assert "protocol" in capsys.readouterr().err


def test_fit_uses_one_blas_thread(monkeypatch):
    """The fit runs with one BLAS thread (a multi-threaded OpenBLAS on busy cores was >10x slower)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    seen = []
    real_fit = LogisticRegression.fit

    def spy(self, *a, **k):
        seen.append([d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"])
        return real_fit(self, *a, **k)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    rng = np.random.default_rng(0)
    lin.fit_fold(rng.normal(size=(30, 5)), np.arange(30) % 3)
    assert seen and all(n == 1 for n in seen[0]) and seen[0]

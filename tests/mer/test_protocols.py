"""Splitters: no subject on both sides of any fold; every sample tested exactly once (LOSO, K-fold)."""

from __future__ import annotations

import numpy as np
import pytest

from mer.data import Sample
from mer.protocols import Fold, check_folds, cross_dataset, leave_one_dataset_out, loso, subject_kfold


def _samples(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    # the same subject spelling in two datasets must stay two subjects
    per_dataset = [("casme2", ["sub01", "sub02", "s01"]), ("smic", ["s01", "s02"]), ("samm", ["006", "007", "009"])]
    for db, subjects in per_dataset:
        for s in subjects:
            for k in range(int(rng.integers(1, 6))):
                out.append(Sample(db, s, f"{s}_{k}", (), 0, 0, 0, label=int(rng.integers(0, 3))))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _assert_disjoint(folds, samples):
    keys = [(s.dataset, s.subject) for s in samples]
    for f in folds:
        assert not ({keys[i] for i in f.train} & {keys[i] for i in f.test}), f.name
        assert len(np.intersect1d(f.train, f.test)) == 0


@pytest.mark.parametrize("seed", range(5))
def test_loso(seed):
    samples = _samples(seed)
    folds = loso(samples)
    assert len(folds) == 8  # 3 + 2 + 3 (dataset, subject) pairs
    _assert_disjoint(folds, samples)
    tested = np.sort(np.concatenate([f.test for f in folds]))
    np.testing.assert_array_equal(tested, np.arange(len(samples)))
    for f in folds:
        assert len(f.train) + len(f.test) == len(samples) and len(f.test_subjects) == 1


@pytest.mark.parametrize("k", [2, 3, 5])
def test_subject_kfold(k):
    samples = _samples(3)
    folds = subject_kfold(samples, k, seed=1)
    assert len(folds) == k
    _assert_disjoint(folds, samples)
    tested = np.sort(np.concatenate([f.test for f in folds]))
    np.testing.assert_array_equal(tested, np.arange(len(samples)))
    assert [f.test.tolist() for f in subject_kfold(samples, k, seed=1)] == [f.test.tolist() for f in folds]
    with pytest.raises(ValueError, match="k must be"):
        subject_kfold(samples, 99)


def test_cross_dataset():
    samples = _samples(4)
    (f,) = cross_dataset(samples, ["casme2", "samm"], ["smic"])
    assert {samples[i].dataset for i in f.test} == {"smic"}
    assert {samples[i].dataset for i in f.train} == {"casme2", "samm"}
    assert len(leave_one_dataset_out(samples)) == 3
    with pytest.raises(ValueError, match="overlap"):
        cross_dataset(samples, ["smic"], ["smic"])
    with pytest.raises(ValueError, match="no samples of dataset 'casme3'"):
        cross_dataset(samples, ["smic"], ["casme3"])


def test_check_folds_catches_leakage():
    samples = _samples(0)
    i = next(j for j, s in enumerate(samples) if s.subject == "sub01")
    k = (
        next(j for j, s in enumerate(samples) if s.subject == "sub01" and j != i)
        if sum(s.subject == "sub01" for s in samples) > 1
        else i
    )
    bad = Fold("bad", np.array([i]), np.array([k]), ())
    with pytest.raises(AssertionError, match="both"):
        check_folds([bad], samples)

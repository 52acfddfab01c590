"""Evaluation protocols over a list of samples: LOSO, subject-grouped K-fold, cross-dataset.

A subject is the pair (dataset, subject): ``sub01`` of CASME II and ``s01`` of SMIC are different people,
and so are equal spellings in two datasets. Every fold's test subjects are absent from its training set
(checked by :func:`check_folds`, which each splitter calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    """train, test: int64 index arrays into the sample list; test_subjects: (dataset, subject) pairs."""

    name: str
    train: np.ndarray
    test: np.ndarray
    test_subjects: tuple[tuple[str, str], ...]


def subject_keys(samples) -> list[tuple[str, str]]:
    return [(s.dataset, s.subject) for s in samples]


def check_folds(folds: Sequence[Fold], samples) -> None:
    """Raise if any fold has a subject on both sides or overlapping/out-of-range indices."""
    keys = subject_keys(samples)
    for f in folds:
        tr = {keys[i] for i in f.train}
        te = {keys[i] for i in f.test}
        both = tr & te
        if both:
            raise AssertionError(f"fold {f.name}: subjects in both train and test: {sorted(both)}")
        if len(np.intersect1d(f.train, f.test)):
            raise AssertionError(f"fold {f.name}: a sample is in both train and test")


def loso(samples) -> list[Fold]:
    """Leave one subject out: one fold per (dataset, subject), in order of first appearance; each trains
    on every other subject of every dataset in ``samples`` (the MEGC2019 composite protocol)."""
    keys = subject_keys(samples)
    arr = np.arange(len(keys))
    folds = []
    for k in dict.fromkeys(keys):
        mask = np.array([x == k for x in keys])
        folds.append(Fold(f"{k[0]}/{k[1]}", arr[~mask], arr[mask], (k,)))
    check_folds(folds, samples)
    return folds


def subject_kfold(samples, k: int = 5, *, seed: int = 0) -> list[Fold]:
    """K folds of whole subjects, balanced by sample count (greedy: largest subject first, ties in a
    seeded random order, into the fold with the fewest samples). Deterministic for a given seed."""
    keys = subject_keys(samples)
    subjects = list(dict.fromkeys(keys))
    if not 2 <= k <= len(subjects):
        raise ValueError(f"k must be between 2 and the number of subjects ({len(subjects)}), got {k}")
    counts = {s: 0 for s in subjects}
    for x in keys:
        counts[x] += 1
    rng = np.random.default_rng(seed)
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    order.sort(key=lambda s: -counts[s])  # stable: ties keep the seeded order
    load = [0] * k
    members: list[list] = [[] for _ in range(k)]
    for s in order:
        j = int(np.argmin(load))
        members[j].append(s)
        load[j] += counts[s]
    arr = np.arange(len(keys))
    folds = []
    for j in range(k):
        m = set(members[j])
        mask = np.array([x in m for x in keys])
        folds.append(Fold(f"fold{j}", arr[~mask], arr[mask], tuple(sorted(m))))
    check_folds(folds, samples)
    return folds


def cross_dataset(samples, train: Sequence[str], test: Sequence[str]) -> list[Fold]:
    """One fold: train on the samples of the ``train`` datasets, test on those of ``test`` (disjoint)."""
    train, test = tuple(train), tuple(test)
    if set(train) & set(test):
        raise ValueError(f"train {train} and test {test} datasets overlap")
    ds = np.array([s.dataset for s in samples])
    for d in train + test:
        if d not in ds:
            raise ValueError(f"no samples of dataset {d!r} (have {sorted(set(ds))})")
    arr = np.arange(len(samples))
    te = arr[np.isin(ds, test)]
    fold = Fold(
        f"{'+'.join(train)}->{'+'.join(test)}",
        arr[np.isin(ds, train)],
        te,
        tuple(dict.fromkeys((samples[i].dataset, samples[i].subject) for i in te)),
    )
    check_folds([fold], samples)
    return [fold]


def leave_one_dataset_out(samples) -> list[Fold]:
    """One cross-dataset fold per dataset: test on it, train on all the others."""
    names = list(dict.fromkeys(s.dataset for s in samples))
    return [cross_dataset(samples, [d for d in names if d != t], [t])[0] for t in names]

"""Folds of a run: the protocol string, stable fold names, the inner validation split, rank sharding.

Every split is by subject (dataset, subject) and built by :mod:`mer.protocols`, which checks that no
subject is on both sides of a fold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mer.protocols import Fold


@dataclass(frozen=True)
class Protocol:
    """kind: 'loso' | 'kfold' | 'cross' | 'holdout'; k for kfold; train/test dataset names for cross."""

    kind: str
    k: int = 0
    train: tuple[str, ...] = ()
    test: tuple[str, ...] = ()


def parse_protocol(text: str) -> Protocol:
    """'loso' | 'kfold:K' | 'cross:train=casme2,samm;test=smic' | 'holdout-dataset' -> Protocol (ValueError
    with the syntax)."""
    t = text.strip().lower()
    if t == "loso":
        return Protocol("loso")
    if t == "holdout-dataset":
        return Protocol("holdout")
    m = re.fullmatch(r"kfold:(\d+)", t)
    if m:
        k = int(m.group(1))
        if k < 2:
            raise ValueError(f"protocol kfold:K needs K >= 2, got {text!r}")
        return Protocol("kfold", k=k)
    m = re.fullmatch(r"cross:train=([a-z0-9,]+);test=([a-z0-9,]+)", t)
    if m:
        return Protocol("cross", train=tuple(m.group(1).split(",")), test=tuple(m.group(2).split(",")))
    raise ValueError(f"protocol must be 'loso', 'kfold:K', 'cross:train=A,B;test=C' or 'holdout-dataset', got {text!r}")


def build_folds(samples, protocol: str, *, kfold_seed: int = 0, loso_folds: list[Fold] | None = None) -> list[Fold]:
    """The folds of ``protocol`` over ``samples`` (indices into the list). ``loso_folds``: the data source's
    own leave-one-subject-out folds (the HTNet release's), used for 'loso' after checking that they are
    exactly one fold per subject.

    'holdout-dataset' (MEGC2018's holdout-database evaluation): one fold per database, trained on all the
    others (two of the composite's three) and tested on it; the pooled predictions cover every sample once.
    """
    from mer.protocols import check_folds, cross_dataset, leave_one_dataset_out, loso, subject_kfold

    p = parse_protocol(protocol)
    if p.kind == "loso":
        if loso_folds is None:
            return loso(samples)
        check_folds(loso_folds, samples)

        def split(folds):
            return {f.test_subjects: (sorted(f.test.tolist()), sorted(f.train.tolist())) for f in folds}

        if len(loso_folds) != len(split(loso_folds)) or split(loso_folds) != split(loso(samples)):
            raise ValueError(
                "the data source's LOSO folds are not exactly one fold per subject, trained on every other subject"
            )
        return list(loso_folds)
    if p.kind == "kfold":
        return subject_kfold(samples, p.k, seed=kfold_seed)
    if p.kind == "holdout":
        if len({s.dataset for s in samples}) < 2:
            raise ValueError("protocol holdout-dataset needs samples of at least 2 datasets")
        return leave_one_dataset_out(samples)
    return cross_dataset(samples, p.train, p.test)


def fold_dirname(index: int, fold: Fold) -> str:
    """'007-casme2-sub08': sortable, file-system safe, readable."""
    safe = re.sub(r"[^A-Za-z0-9._+=-]+", "-", fold.name).strip("-")
    return f"{index:03d}-{safe}"


def validation_split(
    train_idx: np.ndarray, subjects: list[tuple[str, str]], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split the training indices of a fold by subject into (fit, val).

    subjects: (dataset, subject) of every sample of the run. Whole subjects go to val (at least one, at
    most all but one), drawn with ``seed``; deterministic. Only ``train_idx`` is ever looked at, so a
    held-out subject cannot end up in either part.
    """
    train_idx = np.asarray(train_idx)
    subs = list(dict.fromkeys(subjects[i] for i in train_idx))
    if len(subs) < 2:
        raise ValueError(f"selection='val' needs at least 2 training subjects, the fold has {len(subs)}")
    n_val = min(len(subs) - 1, max(1, int(round(fraction * len(subs)))))
    rng = np.random.default_rng(seed)
    val_subs = {subs[i] for i in rng.permutation(len(subs))[:n_val]}
    is_val = np.array([subjects[i] in val_subs for i in train_idx])
    return train_idx[~is_val], train_idx[is_val]


def shard(n_folds: int, rank: int, world: int) -> list[int]:
    """Fold indices of ``rank`` out of ``world`` ranks (round robin)."""
    return [i for i in range(n_folds) if i % world == rank]

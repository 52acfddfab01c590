"""The linear floor: multinomial logistic regression on the flattened input, standardised on each fold's
training subjects, out-of-fold predictions under a subject-wise protocol, pooled UF1/UAR.

    res = linear_floor(x, y, groups, datasets=datasets)       # x (N, ...) features, y (N,) labels 0..2
    res.pred    (N,) int64   out-of-fold prediction of every sample (-1: in no fold's test set)
    res.proba   (N, 3) float64 out-of-fold class probabilities (NaN rows: untested)
    res.scores  {'all': {'uf1', 'uar', 'n', 'confusion'}, 'casme2': {...}, ...}  (mer.metrics.breakdown)

Per fold: ``StandardScaler`` (per-feature mean and standard deviation) and
``LogisticRegression(solver='lbfgs')`` are fitted on the fold's training rows only, then applied to its
test rows; a fold whose training and test rows share a subject raises. The lbfgs solver has no
randomness (same inputs, same bits), so LOSO and holdout-dataset give one number; only the subject
assignment of ``kfold:K`` depends on a seed, and :func:`run_protocol` repeats that protocol over seeds.

This is the calibration point of issue 16: a model worth reporting must beat it clearly on the same input
and split. Command line (real composite of the public HTNet release, or a ``mer synth`` output prepared
by the project's pipeline):

    python -m mer.baselines.linear --htnet-release PATH --input flow,tiles \\
        --protocol loso,kfold:5,holdout-dataset --seeds 0,1,2 --out benchmarks/results/real-linear-floor-DATE
    python -m mer.baselines.linear --synth data/synth --input flow --protocol loso --out runs/synth-floor

Relation to ``python -m mer.synth.baseline``: that one is another linear model (the same standardisation +
logistic regression, LOSO) on 20 hand-made features (mean DIS flow in 10 facial regions of a 128 px
crop); this floor reads the 28x28x3 maps the models see (2352 features), so it is the reference for the
models' own input.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mer.metrics import breakdown
from mer.protocols import Fold, leave_one_dataset_out, loso, subject_kfold

CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class LinearConfig:
    """The floor's classifier.

    C: inverse L2 strength of the logistic regression (scikit-learn's default 1.0).
    class_weight: 'none' or 'balanced' (n / (K n_c) on the fold's training rows).
    max_iter / tol: lbfgs stopping rule; folds that hit max_iter are counted in the result.
    """

    C: float = 1.0
    class_weight: str = "none"
    max_iter: int = 5000
    tol: float = 1e-4

    def __post_init__(self):
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"class_weight must be one of {CLASS_WEIGHTS}, got {self.class_weight!r}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


@dataclass
class FloorResult:
    """Out-of-fold predictions of :func:`linear_floor` (row i belongs to sample i).

    pred: (N,) int64 (-1 where no fold tests the sample); proba: (N, L) float64 over ``labels`` (NaN rows
    where untested); fold_of: (N,) int64 index into ``folds`` of the fold that tested the sample (-1);
    scores: mer.metrics.breakdown of the tested samples, 'all' and per dataset; fold_info: per fold
    name, sizes, subjects, lbfgs iterations; models: the fitted pipelines when keep_models=True.
    """

    pred: np.ndarray
    proba: np.ndarray
    fold_of: np.ndarray
    folds: list[Fold]
    scores: dict
    config: LinearConfig
    labels: tuple[int, ...]
    seconds: float
    fold_info: list[dict] = field(default_factory=list)
    models: list = field(default_factory=list)

    @property
    def not_converged(self) -> int:
        """Folds whose lbfgs run stopped at max_iter."""
        return sum(f["not_converged"] for f in self.fold_info)


def fit_fold(x_train: np.ndarray, y_train: np.ndarray, config: LinearConfig | None = None):
    """Standardisation + logistic regression fitted on (x_train (n, D) float, y_train (n,)) only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    cfg = config or LinearConfig()
    clf = LogisticRegression(
        C=cfg.C,
        class_weight=None if cfg.class_weight == "none" else "balanced",
        max_iter=cfg.max_iter,
        tol=cfg.tol,
        solver="lbfgs",
    )
    model = make_pipeline(StandardScaler(), clf)
    # one BLAS thread: the products here are small (~430 x 2352), and a multi-threaded OpenBLAS on cores
    # that other work holds waits on its descheduled threads (2 busy cores of the development VM: 68 LOSO
    # folds in 18 s with one thread, unfinished after 200 s with OpenBLAS's default two)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.filterwarnings("ignore", message=".*lbfgs failed to converge.*")
        model.fit(x_train, y_train)
    return model


def _as_fold(i: int, f) -> Fold:
    if isinstance(f, Fold):
        return f
    train, test = f
    return Fold(f"fold{i}", np.asarray(train, np.int64), np.asarray(test, np.int64), ())


def linear_floor(
    x,
    y,
    groups=None,
    *,
    folds: Sequence | None = None,
    datasets=None,
    config: LinearConfig | None = None,
    labels: Sequence[int] = (0, 1, 2),
    keep_models: bool = False,
    progress: bool = False,
) -> FloorResult:
    """Out-of-fold predictions of the linear floor.

    x: (N, ...) features (flattened to (N, D), float64); y: (N,) int labels in ``labels``;
    groups: (N,) subject of each sample (e.g. 'casme2/sub01'): leave-one-group-out when ``folds`` is
    None, and checked against every fold (no subject on both sides); folds: mer.protocols.Fold objects or
    (train_index, test_index) pairs with disjoint test sets; datasets: (N,) dataset of each sample, for
    the per-dataset scores.
    """
    from tqdm.auto import tqdm

    cfg = config or LinearConfig()
    labels = tuple(int(c) for c in labels)
    X = np.asarray(x, np.float64)
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"x must be (N, ...) with N >= 1 samples, got shape {X.shape}")
    X = X.reshape(len(X), -1)
    if not np.isfinite(X).all():
        raise ValueError(f"x holds NaN/inf in {int((~np.isfinite(X)).any(1).sum())} rows")
    y = np.asarray(y).ravel()
    n = len(X)
    if y.shape != (n,):
        raise ValueError(f"y has {y.size} labels for {n} samples")
    bad = sorted({int(v) for v in y} - set(labels))
    if bad:
        raise ValueError(f"labels {bad} are not in {labels}")
    y = y.astype(np.int64)
    g = None if groups is None else np.asarray([str(v) for v in groups])
    if g is not None and g.shape != (n,):
        raise ValueError(f"groups has {g.size} entries for {n} samples")
    ds = None if datasets is None else np.asarray([str(v) for v in datasets])
    if ds is not None and ds.shape != (n,):
        raise ValueError(f"datasets has {ds.size} entries for {n} samples")
    if folds is None:
        if g is None:
            raise ValueError("pass groups (the subject of each sample) for leave-one-subject-out, or explicit folds")
        order = list(dict.fromkeys(g))
        idx = np.arange(n)
        folds = [Fold(s, idx[g != s], idx[g == s], ()) for s in order]
    folds = [_as_fold(i, f) for i, f in enumerate(folds)]

    pred = np.full(n, -1, np.int64)
    proba = np.full((n, len(labels)), np.nan)
    fold_of = np.full(n, -1, np.int64)
    info, models = [], []
    col = {c: j for j, c in enumerate(labels)}
    t0 = time.perf_counter()
    for k, f in enumerate(tqdm(folds, desc="linear floor", unit="fold", disable=not progress)):
        train, test = np.asarray(f.train, np.int64), np.asarray(f.test, np.int64)
        if len(train) == 0 or len(test) == 0:
            raise ValueError(f"fold {f.name}: empty train ({len(train)}) or test ({len(test)}) set")
        if train.min() < 0 or test.min() < 0 or max(train.max(), test.max()) >= n:
            raise ValueError(f"fold {f.name}: indices outside 0..{n - 1}")
        if (fold_of[test] >= 0).any():
            raise ValueError(f"fold {f.name}: samples already tested by another fold (test sets must be disjoint)")
        if np.intersect1d(train, test).size:
            raise ValueError(f"fold {f.name}: a sample is in both its train and test sets")
        if g is not None:
            both = sorted(set(g[train]) & set(g[test]))
            if both:
                raise ValueError(f"fold {f.name}: subjects in both train and test: {both[:5]}")
        if len(np.unique(y[train])) < 2:
            raise ValueError(f"fold {f.name}: its training rows hold a single class; the floor needs two or more")
        model = fit_fold(X[train], y[train], cfg)
        p = model.predict_proba(X[test])
        classes = [int(c) for c in model[-1].classes_]
        proba[test] = 0.0
        proba[np.ix_(test, [col[c] for c in classes])] = p
        pred[test] = model.predict(X[test])
        fold_of[test] = k
        n_iter = int(np.max(model[-1].n_iter_))
        info.append(
            {
                "name": f.name,
                "n_train": int(len(train)),
                "n_test": int(len(test)),
                "test_subjects": sorted(set(g[test])) if g is not None else [],
                "train_classes": classes,
                "n_iter": n_iter,
                "not_converged": int(n_iter >= cfg.max_iter),
            }
        )
        if keep_models:
            models.append(model)
    seconds = time.perf_counter() - t0
    tested = fold_of >= 0
    groups_for_scores = ds[tested] if ds is not None else np.full(int(tested.sum()), "all")
    scores = breakdown(y[tested], pred[tested], groups_for_scores, labels)
    if ds is None:
        scores = {"all": scores["all"]}
    return FloorResult(pred, proba, fold_of, folds, scores, cfg, labels, seconds, info, models)


# ------------------------------------------------------------------------------------------ protocols

PROTOCOLS = ("loso", "kfold:K", "holdout-dataset")


@dataclass(frozen=True)
class _Key:
    dataset: str
    subject: str


def parse_protocol(protocol: str) -> tuple[str, int]:
    """'loso' | 'kfold:K' | 'holdout-dataset' -> (name, K) (K = 0 unless kfold)."""
    p = protocol.strip().lower()
    if p in ("loso", "holdout-dataset"):
        return p, 0
    if p.startswith("kfold:"):
        try:
            k = int(p.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 2:
            return "kfold", k
    raise ValueError(f"protocol must be one of {PROTOCOLS} (e.g. kfold:5), got {protocol!r}")


def protocol_folds(datasets, subjects, protocol: str, seed: int = 0) -> list[Fold]:
    """The folds of ``protocol`` over samples given by their dataset and subject ((N,) each; a subject is
    the pair (dataset, subject)): 'loso' (one fold per subject, mer.protocols.loso), 'kfold:K'
    (subject-grouped, balanced by sample count, seeded: mer.protocols.subject_kfold) or 'holdout-dataset'
    (train on the other datasets, test on one; one fold per dataset: mer.protocols.leave_one_dataset_out)."""
    name, k = parse_protocol(protocol)
    keys = [_Key(str(d), str(s)) for d, s in zip(datasets, subjects, strict=True)]
    if name == "loso":
        return loso(keys)
    if name == "kfold":
        return subject_kfold(keys, k, seed=seed)
    if len({x.dataset for x in keys}) < 2:
        raise ValueError("holdout-dataset needs samples of at least two datasets")
    return leave_one_dataset_out(keys)


def _sd(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _summary(runs: list[dict]) -> dict:
    out = {}
    for group in runs[0]["scores"]:
        uf1 = np.array([r["scores"][group]["uf1"] for r in runs])
        uar = np.array([r["scores"][group]["uar"] for r in runs])
        out[group] = {
            "n": runs[0]["scores"][group]["n"],
            "uf1_mean": float(uf1.mean()),
            "uf1_std": _sd(uf1),
            "uar_mean": float(uar.mean()),
            "uar_std": _sd(uar),
        }
    return out


def run_protocol(
    x,
    y,
    datasets,
    subjects,
    protocol: str,
    seeds: Sequence[int] = (0,),
    config: LinearConfig | None = None,
    progress: bool = False,
) -> dict:
    """The floor under ``protocol`` (see :func:`protocol_folds`), over ``seeds`` where the result depends
    on one (kfold's subject assignment; LOSO and holdout-dataset run once: fixed folds, deterministic
    solver). Returns a JSON-ready dict: protocol, seeds run, per-seed scores and fold count,
    summary (mean and sample std over seeds, 'all' and per dataset), and the first seed's
    out-of-fold ``pred``/``proba``/``fold`` lists."""
    name, _ = parse_protocol(protocol)
    cfg = config or LinearConfig()
    datasets = np.asarray([str(d) for d in datasets])
    groups = np.asarray([f"{d}/{s}" for d, s in zip(datasets, subjects, strict=True)])
    seeds = list(seeds) if name == "kfold" else list(seeds)[:1]
    runs, first = [], None
    for seed in seeds:
        folds = protocol_folds(datasets, subjects, protocol, seed)
        res = linear_floor(x, y, groups, folds=folds, datasets=datasets, config=cfg, progress=progress)
        if (res.fold_of < 0).any():
            raise AssertionError(f"{protocol}: {(res.fold_of < 0).sum()} samples in no test set")
        runs.append(
            {
                "seed": int(seed),
                "n_folds": len(folds),
                "seconds": round(res.seconds, 2),
                "not_converged": res.not_converged,
                "scores": res.scores,
            }
        )
        if first is None:
            first = res
    return {
        "protocol": protocol,
        "deterministic_folds": name != "kfold",
        "seeds": seeds,
        "config": asdict(cfg),
        "runs": runs,
        "summary": _summary(runs),
        "pred": first.pred.tolist(),
        "proba": np.round(first.proba, 6).tolist(),
        "fold": [first.folds[i].name for i in first.fold_of],
    }


if __name__ == "__main__":
    from mer.baselines.cli import main

    raise SystemExit(main())

"""Reference baselines that every model is calibrated against.

    from mer.baselines import linear_floor, protocol_folds
    res = linear_floor(x, y, groups, datasets=datasets)     # LOSO over the groups (subjects)
    res.pred, res.proba, res.scores["all"]["uf1"]

``linear``: the linear floor of issue 16 (logistic regression on the flattened input, standardised on
each fold's training subjects, out-of-fold predictions, pooled UF1/UAR); its command line is
``python -m mer.baselines.linear`` (docs/synth.md, benchmarks/results/real-linear-floor-*).
"""

_EXPORTS = ("LinearConfig", "FloorResult", "fit_fold", "linear_floor", "protocol_folds", "run_protocol")

__all__ = list(_EXPORTS)


def __getattr__(name):  # lazy, so that `python -m mer.baselines.linear` does not import itself twice
    if name in _EXPORTS:
        from mer.baselines import linear

        return getattr(linear, name)
    raise AttributeError(f"module 'mer.baselines' has no attribute {name!r}")

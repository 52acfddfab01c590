"""The run's data: samples from the configured source, prepared (cached) into model inputs.

    samples, x, y, prepared = load_inputs(cfg)
    x: (M, 3, S, S) float32 = u, v, strain of the face or of the tiled regions (cfg.input), NOT normalised
    y: (M,) int64 labels in {0, 1, 2}
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mer.train.config import TrainConfig


class DataSourceError(ValueError):
    """The configured data source is missing or incomplete."""


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with every data path made absolute (so a saved config and `mer predict` find them)."""
    kw = {}
    for name in ("data", "casme2", "samm", "smic", "root", "sample_list"):
        v = getattr(cfg, name)
        if v is not None:
            kw[name] = str(Path(v).expanduser().resolve())
    kw["out"] = str(Path(cfg.out).expanduser().resolve())
    return cfg.replace(**kw)


def check_source(cfg: TrainConfig) -> None:
    """Cheap checks of the data source (folders exist) before anything is written or computed."""
    if cfg.data is not None:
        d = Path(cfg.data)
        lst = Path(cfg.sample_list) if cfg.sample_list else d / "megc2019_composite.csv"
        missing = [str(p) for p in (d / "casme2", d / "samm", d / "smic", lst) if not p.exists()]
        if missing:
            raise DataSourceError(
                f"--data {d}: expected a `mer synth` output (casme2/, samm/, smic/, megc2019_composite.csv); "
                f"missing: {', '.join(missing)}. Generate it with `mer synth --out {d}`.")
        return
    roots = {k: getattr(cfg, k) for k in ("casme2", "samm", "smic", "root") if getattr(cfg, k) is not None}
    if not roots:
        raise DataSourceError("no data: pass --data DIR (a `mer synth` output), --casme2/--samm/--smic ROOTs, "
                              "or --dataset NAME --root ROOT")
    missing = [f"--{k} {v}" for k, v in roots.items() if not Path(v).is_dir()]
    if cfg.sample_list is not None and not Path(cfg.sample_list).is_file():
        missing.append(f"--sample-list {cfg.sample_list}")
    if missing:
        raise DataSourceError(f"not found: {', '.join(missing)}")


def load_samples(cfg: TrainConfig, excluded: list | None = None) -> list:
    """The labelled samples of the run (3-class protocol), in a deterministic order.

    A dataset problem (a frame missing on disk, an apex outside the clip, ...) raises one DatasetError
    listing them all; with cfg.on_prep_error='warn' (`mer train --on-error warn`) those samples are
    excluded with a warning and appended to ``excluded`` as (where, reason) pairs.
    """
    from mer.data import DatasetError

    check_source(cfg)
    if cfg.on_prep_error != "warn":
        return _load_samples(cfg, "raise")
    try:
        with warnings.catch_warnings(record=True) as notes:  # shown once, below or by the second load
            warnings.simplefilter("always")
            samples = _load_samples(cfg, "raise")
        for w in notes:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return samples
    except DatasetError as e:
        if not e.problems:  # not about samples (e.g. no root for a dataset): excluding cannot help
            raise
        reasons: dict = {}
        for prob in e.problems:
            reasons.setdefault(prob.where, []).append(f"{prob.kind}: {prob.what}")
        if excluded is not None:
            excluded += [(where, "; ".join(why)) for where, why in reasons.items()]
    return _load_samples(cfg, "warn")


def _load_samples(cfg: TrainConfig, on_error: str) -> list:
    from mer.data import casme3_part_a, load_dataset, megc2019_composite

    if cfg.data is not None:
        d = Path(cfg.data)
        lst = Path(cfg.sample_list) if cfg.sample_list else d / "megc2019_composite.csv"
        return megc2019_composite(casme2=d / "casme2", samm=d / "samm", smic=d / "smic", sample_list=lst,
                                  frames=cfg.frames, on_error=on_error)
    roots = {k: getattr(cfg, k) for k in ("casme2", "samm", "smic") if getattr(cfg, k) is not None}
    if len(roots) == 3:
        return megc2019_composite(**roots, sample_list=cfg.sample_list, frames=cfg.frames, on_error=on_error)
    if roots:
        if cfg.sample_list:
            return megc2019_composite(**roots, sample_list=cfg.sample_list, frames=cfg.frames, on_error=on_error)
        out = []
        for name, root in roots.items():
            out += _labelled(name, load_dataset(name, root, frames=cfg.frames, on_error=on_error))
        return out
    if cfg.dataset == "casme3":
        return casme3_part_a(cfg.root, sample_list=cfg.sample_list, frames=cfg.frames, on_error=on_error)
    return _labelled(cfg.dataset, load_dataset(cfg.dataset, cfg.root, frames=cfg.frames, on_error=on_error))


def _labelled(name: str, samples: list) -> list:
    keep = [s for s in samples if s.label is not None]
    if len(keep) < len(samples):
        warnings.warn(f"{name}: {len(samples) - len(keep)} of {len(samples)} samples are outside the 3-class "
                      "protocol (e.g. 'others') and are not used", stacklevel=3)
    return keep


class _Excluded(str):
    """A sample the loader excluded, known by where its problem is (e.g. 'casme2 sub01/EP02_01f (sheet row 3)')."""

    @property
    def uid(self) -> str:
        return str(self)


def load_inputs(cfg: TrainConfig, *, workers: int = 1, progress: bool = True):
    """(samples, x (M,3,S,S) float32, y (M,) int64, PreparedSet) for the run. A sample that cannot be
    prepared raises (listing them all), or with cfg.on_prep_error='warn' is excluded and listed in
    ``PreparedSet.failed``."""
    from mer.preprocess import prepare

    load_excluded: list = []
    samples = load_samples(cfg, load_excluded)
    if not samples:
        raise DataSourceError("the data source holds no labelled samples")
    ps = prepare(samples, cfg.prep, cfg.cache_dir, workers=workers, progress=progress, on_error=cfg.on_prep_error)
    # samples the loader excluded (--on-error warn) are listed with those the preparation could not use
    ps.failed[:0] = [(_Excluded(where), why) for where, why in load_excluded]
    x = ps.face if cfg.input == "face" else ps.regions
    y = ps.labels
    bad = sorted({int(v) for v in y if v not in (0, 1, 2)})
    if bad:
        raise DataSourceError(f"labels {bad} are outside the 3-class protocol (0, 1, 2)")
    if not np.isfinite(x).all():
        n = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
        raise DataSourceError(f"{n} prepared samples hold NaN/inf values")
    return ps.samples, np.ascontiguousarray(x, np.float32), y.astype(np.int64), ps

"""The run's data: samples from the configured source, prepared (cached) into model inputs.

inputs = load_inputs(cfg)
inputs.x: (M, 3, S, S) float32, NOT normalised: u, v, strain of the face or of the tiled regions
    (cfg.input), or for ``data='htnet-release:PATH'`` the release's images as it feeds them (raw 0-255,
    cv2's BGR channel order: strain, v, u): its tiles (input 'regions') or whole flow images ('face')
inputs.y: (M,) int64 labels in {0, 1, 2}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mer.train.config import TrainConfig

RELEASE_PREFIX = "htnet-release:"
RELEASE_SIZE = 28  # the release's images are 28 x 28


class DataSourceError(ValueError):
    """The configured data source is missing or incomplete."""


@dataclass(frozen=True)
class SampleId:
    """A sample's identity where no prepared Sample exists (the HTNet release's precomputed images)."""

    dataset: str
    subject: str
    clip: str

    @property
    def uid(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.clip}"


@dataclass
class RunInputs:
    """samples (each with .dataset, .subject, .clip, .uid), x (M, 3, S, S) float32, y (M,) int64; excluded:
    [(sample, reason)] the preparation could not use; loso_folds: the source's own LOSO folds (or None)."""

    samples: list
    x: np.ndarray
    y: np.ndarray
    excluded: list = field(default_factory=list)
    loso_folds: list | None = None


def release_root(cfg: TrainConfig) -> str | None:
    """PATH of ``data='htnet-release:PATH'``, else None."""
    if cfg.data is not None and cfg.data.startswith(RELEASE_PREFIX):
        return cfg.data[len(RELEASE_PREFIX) :]
    return None


def input_size(cfg: TrainConfig) -> int:
    """The side S of the run's inputs."""
    return RELEASE_SIZE if release_root(cfg) is not None else cfg.prep.size


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with every data path made absolute (so a saved config and `mer predict` find them)."""
    kw = {}
    for name in ("data", "casme2", "samm", "smic", "root", "sample_list", "annotation"):
        v = getattr(cfg, name)
        if v is not None:
            prefix = RELEASE_PREFIX if name == "data" and v.startswith(RELEASE_PREFIX) else ""
            kw[name] = prefix + str(Path(v[len(prefix) :]).expanduser().resolve())
    if cfg.errata not in ("shipped", "none"):  # a table of the user's
        kw["errata"] = str(Path(cfg.errata).expanduser().resolve())
    kw["out"] = str(Path(cfg.out).expanduser().resolve())
    return cfg.replace(**kw)


def check_source(cfg: TrainConfig) -> None:
    """Cheap checks of the data source (folders exist) before anything is written or computed."""
    rel = release_root(cfg)
    if rel is not None:
        if not Path(rel).is_dir():
            raise DataSourceError(
                f"--data {cfg.data}: {rel} is not a folder; give a clone of the HTNet release "
                "(wangzhifengharrison/HTNet) or a folder with its STSNet_whole_norm_u_v_os/, "
                "combined_datasets_whole/, combined_3_class2_for_optical_flow.csv, "
                "loso_test_lists.txt"
            )
        return
    if cfg.data is not None:
        d = Path(cfg.data)
        lst = Path(cfg.sample_list) if cfg.sample_list else d / "megc2019_composite.csv"
        missing = [str(p) for p in (d / "casme2", d / "samm", d / "smic", lst) if not p.exists()]
        if missing:
            raise DataSourceError(
                f"--data {d}: expected a `mer synth` output (casme2/, samm/, smic/, megc2019_composite.csv); "
                f"missing: {', '.join(missing)}. Generate it with `mer synth --out {d}`."
            )
        return
    roots = {k: getattr(cfg, k) for k in ("casme2", "samm", "smic", "root") if getattr(cfg, k) is not None}
    if not roots:
        raise DataSourceError(
            "no data: pass --data DIR (a `mer synth` output), --casme2/--samm/--smic ROOTs, "
            "or --dataset NAME --root ROOT"
        )
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

    kw = dict(frames=cfg.frames, on_error=on_error, missing_apex=cfg.missing_apex, errata=cfg.errata)
    if cfg.data is not None:
        d = Path(cfg.data)
        lst = Path(cfg.sample_list) if cfg.sample_list else d / "megc2019_composite.csv"
        return megc2019_composite(casme2=d / "casme2", samm=d / "samm", smic=d / "smic", sample_list=lst, **kw)
    roots = {k: getattr(cfg, k) for k in ("casme2", "samm", "smic") if getattr(cfg, k) is not None}
    if len(roots) == 3:
        return megc2019_composite(**roots, sample_list=cfg.sample_list, **kw)
    if roots:
        if cfg.sample_list:
            return megc2019_composite(**roots, sample_list=cfg.sample_list, **kw)
        out = []
        for name, root in roots.items():
            out += _labelled(name, load_dataset(name, root, **kw))
        return out
    if cfg.dataset == "casme3":
        return casme3_part_a(cfg.root, sample_list=cfg.sample_list, annotation=cfg.annotation, **kw)
    return _labelled(cfg.dataset, load_dataset(cfg.dataset, cfg.root, annotation=cfg.annotation, **kw))


def _labelled(name: str, samples: list) -> list:
    keep = [s for s in samples if s.label is not None]
    if len(keep) < len(samples):
        warnings.warn(
            f"{name}: {len(samples) - len(keep)} of {len(samples)} samples are outside the 3-class "
            "protocol (e.g. 'others') and are not used",
            stacklevel=3,
        )
    return keep


class _Excluded(str):
    """A sample the loader excluded, known by where its problem is (e.g. 'casme2 sub01/EP02_01f (sheet row 3)')."""

    @property
    def uid(self) -> str:
        return str(self)


def _read_release(root: str):
    """mer.data.load_htnet_release with its defaults (the shipped landmarks, the composite's counts checked)."""
    from mer.data import load_htnet_release

    return load_htnet_release(root)


def load_release(cfg: TrainConfig) -> RunInputs:
    """The HTNet release's composite: tiles (input 'regions') or whole flow images ('face') as (M, 3, 28, 28)
    float32 of the raw 0-255 values in the release's BGR channel order, its labels and its 68 LOSO folds."""
    from mer.protocols import Fold

    rel = _read_release(release_root(cfg))
    images = rel.tiles if cfg.input == "regions" else rel.flow
    x = np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2))
    samples = [SampleId(str(d), str(s), str(c)) for d, s, c in zip(rel.datasets, rel.subjects, rel.clips, strict=True)]
    everything = np.arange(len(samples))
    folds = []
    for subject, test in rel.folds.items():
        test = np.sort(np.asarray(test, np.int64))
        key = (samples[test[0]].dataset, str(subject))
        folds.append(Fold(f"{key[0]}/{key[1]}", np.setdiff1d(everything, test), test, (key,)))
    return RunInputs(samples, x, np.asarray(rel.labels, np.int64), [], folds)


def load_inputs(cfg: TrainConfig, *, workers: int = 1, progress: bool = True) -> RunInputs:
    """The run's samples and arrays. A sample that cannot be prepared raises (listing them all), or with
    cfg.on_prep_error='warn' is excluded and listed in ``RunInputs.excluded``."""
    from mer.preprocess import prepare

    if release_root(cfg) is not None:
        return _checked(load_release(cfg))
    load_excluded: list = []
    samples = load_samples(cfg, load_excluded)
    if not samples:
        raise DataSourceError("the data source holds no labelled samples")
    ps = prepare(samples, cfg.prep, cfg.cache_dir, workers=workers, progress=progress, on_error=cfg.on_prep_error)
    # samples the loader excluded (--on-error warn) are listed with those the preparation could not use
    ps.failed[:0] = [(_Excluded(where), why) for where, why in load_excluded]
    x = ps.face if cfg.input == "face" else ps.regions
    return _checked(
        RunInputs(ps.samples, np.ascontiguousarray(x, np.float32), ps.labels.astype(np.int64), list(ps.failed))
    )


def _checked(inputs: RunInputs) -> RunInputs:
    bad = sorted({int(v) for v in inputs.y if v not in (0, 1, 2)})
    if bad:
        raise DataSourceError(f"labels {bad} are outside the 3-class protocol (0, 1, 2)")
    if not np.isfinite(inputs.x).all():
        n = int((~np.isfinite(inputs.x)).reshape(len(inputs.x), -1).any(1).sum())
        raise DataSourceError(f"{n} prepared samples hold NaN/inf values")
    return inputs

"""Feature sources for the baselines: the real composite of the public HTNet release, and a ``mer synth``
output prepared by the project's pipeline (the maps the models see).

    fs = release_features(root, ["flow", "tiles"])
    fs = synth_features(data_dir, ["flow", "tiles"], flow="tvl1", cache_dir="~/.cache/mer/prepared")
    fs.x["flow"]   (N, 3, 28, 28) float32, channels (u, v, strain)
    fs.y (N,) int64, fs.datasets (N,) str, fs.subjects (N,) str, fs.names (N,) str

Inputs: ``flow`` = the whole-face 28x28 flow image (real: the release's PNG, min-max normalised to
0..255 per image and channel by the release; synthetic: ``PreparedSet.face``, u/v in pixels of the 28 grid
and strain, not normalised), ``tiles`` = the four facial windows tiled 2x2 (real: the release's model
input, ``mer.data.load_htnet_release(...).tiles``; synthetic: ``PreparedSet.regions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INPUTS = ("flow", "tiles")
#: the release's PNG channels as cv2.imread returns them (BGR of an (u, v, strain) RGB image)
RELEASE_CHANNELS = ("strain", "v", "u")


@dataclass
class FeatureSet:
    """Inputs of one data source, row i = sample i; x[input] (N, 3, S, S) float32 (u, v, strain)."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    datasets: np.ndarray
    subjects: np.ndarray
    names: np.ndarray
    source: dict = field(default_factory=dict)


def to_uvs(img_hwc: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) release images (channels strain, v, u as read by cv2) -> (N, 3, H, W) float32 (u, v, strain)."""
    a = np.asarray(img_hwc, np.float32)
    return np.ascontiguousarray(a[..., ::-1].transpose(0, 3, 1, 2))


def release_features(root, inputs=("flow",), *, landmarks: str = "shipped") -> FeatureSet:
    """The real composite from the public HTNet release at ``root`` (442 samples, 68 subjects), read and
    validated by :func:`mer.data.load_htnet_release` (``landmarks`` places the tiles: 'shipped',
    'mtcnn' or 'fallback')."""
    from mer.data import load_htnet_release

    inputs = list(inputs)
    bad = [i for i in inputs if i not in INPUTS]
    if bad:
        raise ValueError(f"inputs must be among {INPUTS}, got {bad}")
    rel = load_htnet_release(root, landmarks=landmarks)
    x = {i: to_uvs(rel.flow if i == "flow" else rel.tiles) for i in inputs}
    return FeatureSet(
        x,
        np.asarray(rel.labels, np.int64),
        np.asarray(rel.datasets, str),
        np.asarray(rel.subjects, str),
        np.asarray(rel.names, str),
        {
            "kind": "htnet-release",
            "root": str(rel.root),
            "reader": "mer.data.load_htnet_release",
            "landmarks": rel.landmark_mode,
            "landmark_found": int(rel.landmark_found.sum()),
            "channels": "u, v, strain (release PNGs, 0..255 per image)",
        },
    )


def minmax_per_image(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> each image's each channel scaled to 0..255 (the release's normalisation; constant maps -> 0)."""
    x = np.asarray(x, np.float32)
    lo = x.min(axis=(2, 3), keepdims=True)
    span = x.max(axis=(2, 3), keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1) * 255.0, 0.0).astype(np.float32)


def synth_features(
    data,
    inputs=("flow",),
    *,
    flow: str = "tvl1",
    cache_dir="~/.cache/mer/prepared",
    workers: int = 1,
    scale: str = "raw",
    progress: bool = True,
) -> FeatureSet:
    """A ``mer synth`` output prepared as ``mer train --data DIR`` prepares it (the same samples, the same
    cached PrepConfig pipeline); scale 'raw' (the maps the models see) or 'minmax' (the release's per-image
    0..255 normalisation applied to them, for comparisons with the real PNGs)."""
    from mer.preprocess import PrepConfig, prepare
    from mer.train.config import TrainConfig
    from mer.train.data import load_samples

    inputs = list(inputs)
    bad = [i for i in inputs if i not in INPUTS]
    if bad:
        raise ValueError(f"inputs must be among {INPUTS}, got {bad}")
    if scale not in ("raw", "minmax"):
        raise ValueError(f"scale must be 'raw' or 'minmax', got {scale!r}")
    cfg = TrainConfig(data=str(Path(data).expanduser()), prep=PrepConfig(flow=flow))
    samples = load_samples(cfg)
    ps = prepare(samples, cfg.prep, Path(cache_dir).expanduser(), workers=workers, progress=progress)
    maps = {"flow": ps.face, "tiles": ps.regions}
    x = {i: (minmax_per_image(maps[i]) if scale == "minmax" else np.asarray(maps[i], np.float32)) for i in inputs}
    synth_cfg = Path(data) / "synth_config.json"
    meta = {}
    if synth_cfg.is_file():
        import json

        meta = json.loads(synth_cfg.read_text())
    return FeatureSet(
        x,
        ps.labels,
        ps.datasets.astype(str),
        np.array([s.subject for s in ps.samples]),
        np.array([s.clip for s in ps.samples]),
        {
            "kind": "synth",
            "root": str(data),
            "prep": ps.cfg.to_dict(),
            "scale": scale,
            "difficulty": meta.get("difficulty"),
            "seed": meta.get("seed"),
            "channels": "u, v, strain (mer.preprocess maps"
            + (", min-max 0..255 per image)" if scale == "minmax" else ")"),
        },
    )

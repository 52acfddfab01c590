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

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INPUTS = ("flow", "tiles")
RELEASE_SHEET = "combined_3_class2_for_optical_flow.csv"
RELEASE_FLOW_DIR = "STSNet_whole_norm_u_v_os"
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


def _read_release(root: Path) -> dict:
    """The release's sheet and flow PNGs, read directly (a stand-in until mer.data.load_htnet_release lands)."""
    import cv2

    sheet = root / RELEASE_SHEET
    if not sheet.is_file():
        raise FileNotFoundError(f"--htnet-release {root}: no {RELEASE_SHEET}; point it at a clone of the public "
                                "HTNet repository's datasets (the folder holding STSNet_whole_norm_u_v_os/)")
    with open(sheet, newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"dataset", "sub", "filename_o", "label"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{sheet}: expected the columns {sorted(need)}")
    names = [f"{r['sub']}_{r['filename_o']} .png" for r in rows]
    flows, problems = [], []
    for name in names:
        img = cv2.imread(str(root / RELEASE_FLOW_DIR / name), cv2.IMREAD_COLOR)
        if img is None or img.shape != (28, 28, 3):
            problems.append(f"{name}: {'missing/unreadable' if img is None else f'shape {img.shape}'}")
        flows.append(img)
    if problems:
        raise ValueError(f"{len(problems)} flow images of {root / RELEASE_FLOW_DIR} are not usable: "
                         + "; ".join(problems[:5]))
    return {"names": np.array(names), "datasets": np.array([r["dataset"] for r in rows]),
            "subjects": np.array([r["sub"] for r in rows]), "labels": np.array([int(r["label"]) for r in rows]),
            "flow": np.stack(flows)}


def release_features(root, inputs=("flow",)) -> FeatureSet:
    """The real composite from the public HTNet release at ``root`` (442 samples, 68 subjects)."""
    root = Path(root).expanduser()
    inputs = list(inputs)
    bad = [i for i in inputs if i not in INPUTS]
    if bad:
        raise ValueError(f"inputs must be among {INPUTS}, got {bad}")
    try:
        from mer.data import load_htnet_release
    except ImportError:
        load_htnet_release = None
    if load_htnet_release is not None:
        rel = load_htnet_release(root)
        d = {"names": np.asarray(rel.names), "datasets": np.asarray(rel.datasets),
             "subjects": np.asarray(rel.subjects), "labels": np.asarray(rel.labels), "flow": rel.flow,
             "tiles": rel.tiles}
        reader = "mer.data.load_htnet_release"
    else:
        if "tiles" in inputs:
            raise RuntimeError("--input tiles needs mer.data.load_htnet_release (the release's landmark-placed "
                               "tiles, issue 16), which this version of mer does not have; use --input flow")
        d = _read_release(root)
        reader = "mer.baselines.sources._read_release"
    x = {i: to_uvs(d[i]) for i in inputs}
    return FeatureSet(x, d["labels"].astype(np.int64), d["datasets"].astype(str), d["subjects"].astype(str),
                      d["names"].astype(str), {"kind": "htnet-release", "root": str(root), "reader": reader,
                                               "channels": "u, v, strain (release PNGs, 0..255 per image)"})


def minmax_per_image(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> each image's each channel scaled to 0..255 (the release's normalisation; constant maps -> 0)."""
    x = np.asarray(x, np.float32)
    lo = x.min(axis=(2, 3), keepdims=True)
    span = x.max(axis=(2, 3), keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1) * 255.0, 0.0).astype(np.float32)


def synth_features(data, inputs=("flow",), *, flow: str = "tvl1", cache_dir="~/.cache/mer/prepared",
                   workers: int = 1, scale: str = "raw", progress: bool = True) -> FeatureSet:
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
    return FeatureSet(x, ps.labels, ps.datasets.astype(str), np.array([s.subject for s in ps.samples]),
                      np.array([s.clip for s in ps.samples]),
                      {"kind": "synth", "root": str(data), "prep": ps.cfg.to_dict(), "scale": scale,
                       "difficulty": meta.get("difficulty"), "seed": meta.get("seed"),
                       "channels": "u, v, strain (mer.preprocess maps" + (", min-max 0..255 per image)"
                                                                           if scale == "minmax" else ")")})

"""Prediction with trained fold models: the training run's preprocessing, normalisation and model.

    from mer.train.predict import load_checkpoint, predict_pair
    model, meta = load_checkpoint("runs/demo/folds/000-casme2-sub01/model.pt")
    probs = predict_pair([(model, meta)], "onset.jpg", "apex.jpg")    # {'negative': p0, 'positive': ..., ...}
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from mer.labels import LABEL_NAMES
from mer.train.inputs import normalise, predict_proba
from mer.train.loop import CHECKPOINT_FORMAT
from mer.train.models import build_model

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class PredictError(ValueError):
    """A checkpoint, image or clip folder cannot be used (the message says why and what to do)."""


def checkpoint_paths(path) -> list[Path]:
    """model.pt files for a checkpoint file, a fold directory, or a run directory (all its folds)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / "model.pt").is_file():
        return [p / "model.pt"]
    found = sorted((p / "folds").glob("*/model.pt")) if p.is_dir() else []
    if not found:
        raise PredictError(f"no checkpoint at {p}: give a fold's model.pt (RUNDIR/folds/<fold>/model.pt), a fold "
                           "directory, or a finished run directory")
    return found


def load_checkpoint(path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, checkpoint dict without the weights). Loaded with weights_only=True."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PredictError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise PredictError(f"{path} is not a `mer train` checkpoint (format {CHECKPOINT_FORMAT})")
    model = build_model(ck["model"], dict(ck["model_kwargs"]), image_size=int(ck["image_size"]), check=False)
    model.load_state_dict(ck["state_dict"])
    model.eval()
    meta = {k: v for k, v in ck.items() if k != "state_dict"}
    meta["path"] = str(path)
    return model, meta


def clip_frames(folder) -> list[Path]:
    """Image files of a clip folder in frame order (by the last number in the name, then the name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictError(f"clip folder {folder} does not exist")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT and not p.name.startswith(".")]
    if len(files) < 2:
        raise PredictError(f"clip folder {folder} holds {len(files)} image(s); need at least onset and apex")

    def key(p: Path):
        nums = re.findall(r"\d+", p.stem)
        return (int(nums[-1]) if nums else -1, p.name)

    return sorted(files, key=key)


def choose_apex(frames: list[Path], apex: str | None) -> Path:
    """apex: None -> middle frame (onset + (offset - onset) // 2, the SMIC convention); a file name in the
    clip; or an integer position (0 = onset)."""
    if apex is None:
        return frames[(len(frames) - 1) // 2]
    for f in frames:
        if f.name == apex:
            return f
    try:
        i = int(apex)
    except ValueError:
        raise PredictError(f"--apex-frame {apex!r} is neither a file of the clip nor a position "
                           f"(0..{len(frames) - 1})") from None
    if not 0 <= i < len(frames):
        raise PredictError(f"--apex-frame {i} is outside the clip's {len(frames)} frames")
    return frames[i]


def predict_pair(models: list, onset, apex, *, cropped: bool = False) -> dict:
    """Class probabilities for one onset/apex pair, averaged over ``models`` [(model, meta), ...].

    Each model's own preprocessing config (from its checkpoint) is used. Raises PredictError for an
    unreadable image and mer.preprocess.FaceNotFoundError when no face is found.
    """
    from mer.preprocess import PrepConfig, prepare_pair

    for _, meta in models:
        if str(meta.get("config", {}).get("data") or "").startswith("htnet-release:"):
            raise PredictError(f"{meta['path']} was trained on the HTNet release's precomputed flow images; their "
                               "preprocessing (the release's flow and landmarks) is not reproduced from frames here")
    for p in (onset, apex):
        if isinstance(p, (str, Path)):
            import cv2

            if not Path(p).is_file():
                raise PredictError(f"image {p} does not exist")
            if cv2.imread(str(p)) is None:
                raise PredictError(f"cannot read image {p}: not an image OpenCV can decode")
    probs, cache = [], {}
    for model, meta in models:
        cfg = PrepConfig(**meta["prep"])
        if cfg not in cache:
            cache[cfg] = prepare_pair(str(onset), str(apex), cfg, cropped=cropped)
        face, regions, _ = cache[cfg]
        x = (face if meta["input"] == "face" else regions)[None]
        x = normalise(x, np.asarray(meta["norm_mean"]), np.asarray(meta["norm_std"]))
        probs.append(predict_proba(model, x)[0])
    p = np.mean(probs, axis=0)
    return {name: float(v) for name, v in zip(LABEL_NAMES, p, strict=True)}

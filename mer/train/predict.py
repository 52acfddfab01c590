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
        raise PredictError(
            f"no checkpoint at {p}: give a fold's model.pt (RUNDIR/folds/<fold>/model.pt), a fold "
            "directory, or a finished run directory"
        )
    return found


#: what model.pt must hold besides its weights (mer.train.loop.write_fold writes them all)
CHECKPOINT_KEYS = ("state_dict", "model", "model_kwargs", "image_size", "input", "prep", "norm_mean", "norm_std")


def _first_line(e: BaseException) -> str:
    """'Type: the first sentence of the message' (torch's load errors run to several lines of advice)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    text = text.split(". ")[0][:160]
    return f"{type(e).__name__}: {text}".rstrip(": ")


def weights_mismatch(model: torch.nn.Module, state: dict) -> str | None:
    """Why ``state`` (a state_dict) does not fit ``model``: missing / unexpected names, other shapes (None: fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)
    ]
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if items:
            parts.append(f"{len(items)} {what} (e.g. {items[0]})")
    return ", ".join(parts) or None


def load_checkpoint(path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, checkpoint dict without the weights). Loaded with weights_only=True; a file
    that does not load, is not a `mer train` model.pt, or holds weights that do not fit the model it names
    raises PredictError (one line)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, damaged, or not a weights-only torch file
        raise PredictError(
            f"cannot load checkpoint {path} ({_first_line(e)}): the file is damaged, truncated or "
            "not a torch checkpoint; use a fold's model.pt of a finished `mer train` run"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise PredictError(f"{path} is not a `mer train` checkpoint (format {CHECKPOINT_FORMAT})")
    missing = [k for k in CHECKPOINT_KEYS if k not in ck]
    if missing or not isinstance(ck["state_dict"], dict):
        raise PredictError(
            f"{path} is a `mer train` checkpoint without {', '.join(missing) or 'its weights'}: "
            "damaged or edited; use the run's own model.pt"
        )
    model = build_model(ck["model"], dict(ck["model_kwargs"]), image_size=int(ck["image_size"]), check=False)
    why = weights_mismatch(model, ck["state_dict"])
    if why:
        raise PredictError(
            f"{path} holds weights that do not fit its model {ck['model']!r}: {why} tensors. Foreign "
            "or edited weights; use the model.pt that `mer train` wrote with them"
        )
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
        raise PredictError(
            f"--apex-frame {apex!r} is neither a file of the clip nor a position (0..{len(frames) - 1})"
        ) from None
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
            raise PredictError(
                f"{meta['path']} was trained on the HTNet release's precomputed flow images; their "
                "preprocessing (the release's flow and landmarks) is not reproduced from frames here"
            )
    shapes = {}
    for what, p in (("onset", onset), ("apex", apex)):
        if isinstance(p, (str, Path)):
            from mer.data.images import ImageError, read_image

            if not Path(p).is_file():
                raise PredictError(f"image {p} does not exist")
            try:  # the whole file, or an error: a truncated JPEG is not used with grey rows
                shapes[what] = read_image(p).shape[:2]
            except ImageError as e:
                raise PredictError(f"cannot read image {p}: {e.reason}") from None
        else:
            shapes[what] = np.asarray(p).shape[:2]
    if shapes["onset"] != shapes["apex"]:
        (h0, w0), (h1, w1) = shapes["onset"], shapes["apex"]
        raise PredictError(
            f"the onset image {onset} is {w0}x{h0} pixels but the apex image {apex} is {w1}x{h1}: "
            "give two frames of the same clip (same size)"
        )
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

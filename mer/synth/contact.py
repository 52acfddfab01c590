"""Contact sheet of generated clips: onset, apex, magnified difference and optical-flow magnitude.

One row per clip (by default one clip per class and dataset), read back from the files on disk with
the true apex from ``synth_truth.csv``, so the sheet shows what a loader will see.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from mer.synth.writers import TRUTH_NAME

TILE = (200, 175)  # (width, height) of each image in the sheet
INFO_W = 250


def _frame_path(root: Path, row: dict, number: int) -> Path:
    ds, subj, clip = row["dataset"], row["native_subject"], row["native_clip"]
    if ds == "casme2":
        return root / "casme2" / "CASME2_RAW_selected" / subj / clip / f"img{number}.jpg"
    if ds == "samm":
        return root / "samm" / "SAMM" / subj / clip / f"{subj}_{number:05d}.jpg"
    return root / "smic" / "HS" / subj / "micro" / row["emotion"] / clip / f"image{number:06d}.bmp"


def pick_clips(root: Path, per_cell: int = 1) -> list[dict]:
    """``per_cell`` clips of each (dataset, class) in the sample list, in a fixed order."""
    rows = []
    for ds in ("casme2", "samm", "smic"):
        path = root / ds / TRUTH_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {root} the output folder of `mer synth`?")
        with open(path, newline="") as f:
            truth = [r for r in csv.DictReader(f) if r["in_list"] == "1"]
        for label in ("0", "1", "2"):
            rows += [r for r in truth if r["label"] == label][:per_cell]
    return rows


def _flow_heat(go: np.ndarray, ga: np.ndarray) -> np.ndarray:
    """Colour map of |flow - median flow of the face| inside the detected face box (black outside)."""
    from mer.preprocess.face import detect_face

    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(go, ga, None)
    H, W = go.shape
    box = detect_face(go) or (W // 4, H // 4, W // 2, H // 2)
    x, y, w, h = box
    face = flow[y : y + h, x : x + w]
    rel = face - np.median(face.reshape(-1, 2), axis=0)
    mag = np.zeros((H, W), np.float32)
    mag[y : y + h, x : x + w] = np.hypot(rel[..., 0], rel[..., 1])
    return cv2.applyColorMap(np.clip(mag * 127, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def contact_sheet(root, out_png, *, per_cell: int = 1, gain: float = 8.0) -> Path:
    """Write a PNG with one row per clip: onset | apex | (apex - onset) x gain | flow magnitude.

    Returns the PNG path. ``gain`` magnifies the difference image (128 = no change).
    """
    root, out_png = Path(root), Path(out_png)
    names = ["names", "onset", "apex", f"difference x{gain:g}", "flow magnitude (DIS)"]
    rows_img = []
    for r in pick_clips(root, per_cell):
        onset = cv2.imread(str(_frame_path(root, r, int(r["onset"]))), cv2.IMREAD_COLOR)
        apex = cv2.imread(str(_frame_path(root, r, int(r["apex"]))), cv2.IMREAD_COLOR)
        if onset is None or apex is None:
            raise FileNotFoundError(f"frames of {r['dataset']} {r['subject']}/{r['clip']} not found under {root}")
        go, ga = cv2.cvtColor(onset, cv2.COLOR_BGR2GRAY), cv2.cvtColor(apex, cv2.COLOR_BGR2GRAY)
        diff = np.clip(128 + gain * (ga.astype(np.float32) - go.astype(np.float32)), 0, 255).astype(np.uint8)
        heat = _flow_heat(go, ga)
        tiles = [
            cv2.resize(x if x.ndim == 3 else cv2.cvtColor(x, cv2.COLOR_GRAY2BGR), TILE, interpolation=cv2.INTER_AREA)
            for x in (onset, apex, diff, heat)
        ]
        info = np.full((TILE[1], INFO_W, 3), 255, np.uint8)
        lines = [
            f"{r['dataset']} {r['subject']}",
            r["clip"],
            f"{r['emotion']} (label {r['label']})",
            f"AUs {r['aus']}",
            f"amp {float(r['amplitude_px']):.2f}px",
            f"frames {r['onset']}-{r['apex']}-{r['offset']}",
            "blink" if r["blink_start"] else "no blink",
        ]
        for i, t in enumerate(lines):
            cv2.putText(info, t, (6, 22 + 21 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles[0] = _label(tiles[0], f"onset {r['onset']}")
        tiles[1] = _label(tiles[1], f"apex {r['apex']}")
        tiles[2] = _label(tiles[2], names[3])
        tiles[3] = _label(tiles[3], "face flow - median (0-2 px)")
        rows_img.append(np.hstack([info] + tiles))
    sheet = np.vstack(rows_img)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), sheet):
        raise RuntimeError(f"could not write {out_png}")
    return out_png

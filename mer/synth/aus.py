"""FACS action units as smooth, local displacement fields, and the AU prototypes of each emotion.

Each AU is a sum of Gaussian-weighted displacement vectors anchored on the face's landmarks (e.g. AU12
pulls the lip corners up and outwards, AU4 lowers the brows and draws them together). A field is
normalised so that its largest displacement is 1 pixel; a clip scales it by its apex amplitude in
pixels. Units of the tables below: face units (the face half-width), x to the image right, y down;
``s`` is -1 for the image-left half of the face and +1 for the image-right half.
"""

from __future__ import annotations

import numpy as np

# AU -> list of (anchor landmark (side-specific names end with '_'), offset (du, dv) in face units,
#                direction (dx, dy) with s multiplying dx for side-specific anchors, sigma (su, sv), weight)
_Part = tuple[str, tuple[float, float], tuple[float, float], tuple[float, float], float]
AU_PARTS: dict[str, list[_Part]] = {
    "1": [
        ("brow_in_", (0.0, 0.0), (0.0, -1.0), (0.11, 0.09), 1.0),
        ("brow_in_", (0.0, -0.16), (0.0, -1.0), (0.13, 0.10), 0.5),
    ],
    "2": [
        ("brow_out_", (0.0, 0.0), (0.0, -1.0), (0.12, 0.09), 1.0),
        ("brow_out_", (0.0, -0.16), (0.0, -1.0), (0.14, 0.10), 0.45),
    ],
    "4": [
        ("brow_in_", (0.0, 0.0), (-0.55, 0.85), (0.11, 0.08), 1.0),
        ("brow_in_", (0.0, 0.12), (-0.4, 0.6), (0.09, 0.06), 0.55),
        ("brow_out_", (-0.08, 0.0), (0.0, 1.0), (0.12, 0.08), 0.45),
    ],
    "5": [
        ("upper_lid_", (0.0, 0.0), (0.0, -1.0), (0.13, 0.035), 1.0),
        ("upper_lid_", (0.0, -0.06), (0.0, -1.0), (0.14, 0.05), 0.5),
    ],
    "6": [
        ("cheek_", (0.0, 0.0), (0.15, -1.0), (0.15, 0.12), 1.0),
        ("lower_lid_", (0.0, 0.04), (0.0, -1.0), (0.12, 0.05), 0.7),
    ],
    "7": [
        ("lower_lid_", (0.0, 0.0), (0.0, -1.0), (0.12, 0.035), 1.0),
        ("upper_lid_", (0.0, 0.0), (0.0, 1.0), (0.12, 0.03), 0.35),
    ],
    "9": [
        ("nose_wing_", (0.0, -0.04), (0.1, -1.0), (0.07, 0.08), 1.0),
        ("nose_wing_", (0.0, -0.18), (0.1, -1.0), (0.07, 0.07), 0.6),
        ("brow_in_", (0.02, 0.03), (0.0, 1.0), (0.08, 0.06), 0.4),
        ("mouth_", (-0.12, -0.06), (0.0, -1.0), (0.1, 0.06), 0.35),
    ],
    "10": [
        ("mouth_", (-0.14, -0.06), (0.0, -1.0), (0.09, 0.06), 1.0),
        ("nose_wing_", (0.0, 0.05), (0.0, -1.0), (0.07, 0.05), 0.35),
    ],
    "12": [
        ("mouth_", (0.0, 0.0), (0.55, -0.83), (0.09, 0.08), 1.0),
        ("mouth_", (0.06, -0.14), (0.35, -0.94), (0.1, 0.1), 0.45),
        ("cheek_", (0.0, 0.12), (0.1, -1.0), (0.12, 0.1), 0.25),
    ],
    "14": [
        ("mouth_", (0.0, 0.0), (0.45, -0.2), (0.06, 0.06), 1.0),
        ("mouth_", (0.08, 0.0), (-1.0, 0.0), (0.05, 0.06), 0.6),
    ],
    "15": [
        ("mouth_", (0.0, 0.0), (0.1, 1.0), (0.09, 0.08), 1.0),
        ("mouth_", (0.02, 0.12), (0.05, 1.0), (0.1, 0.09), 0.45),
    ],
    "17": [
        ("chin", (0.0, -0.22), (0.0, -1.0), (0.17, 0.11), 1.0),
        ("lower_lip", (0.0, 0.0), (0.0, -1.0), (0.14, 0.05), 0.6),
    ],
    "24": [
        ("upper_lip", (0.0, 0.0), (0.0, 1.0), (0.16, 0.04), 0.7),
        ("lower_lip", (0.0, 0.0), (0.0, -1.0), (0.16, 0.05), 1.0),
    ],
    "26": [
        ("chin", (0.0, -0.1), (0.0, 1.0), (0.35, 0.22), 1.0),
        ("lower_lip", (0.0, 0.0), (0.0, 1.0), (0.18, 0.06), 0.7),
    ],
}
AU_NAMES = {
    "1": "inner brow raiser",
    "2": "outer brow raiser",
    "4": "brow lowerer",
    "5": "upper lid raiser",
    "6": "cheek raiser",
    "7": "lid tightener",
    "9": "nose wrinkler",
    "10": "upper lip raiser",
    "12": "lip corner puller",
    "14": "dimpler",
    "15": "lip corner depressor",
    "17": "chin raiser",
    "24": "lip pressor",
    "26": "jaw drop",
}
#: where each AU's motion is (landmarks), for tests and region checks
AU_REGION = {
    "1": "brow_in_",
    "2": "brow_out_",
    "4": "brow_in_",
    "5": "upper_lid_",
    "6": "cheek_",
    "7": "lower_lid_",
    "9": "nose_wing_",
    "10": "upper_lip",
    "12": "mouth_",
    "14": "mouth_",
    "15": "mouth_",
    "17": "chin",
    "24": "lower_lip",
    "26": "chin",
}
UNILATERAL_OK = ("12", "14")  # AUs that are often one-sided (L/R prefix in the annotations)

# emotion (lower case) -> AU prototypes; a subject has its own preference over them
PROTOTYPES: dict[str, list[tuple[str, ...]]] = {
    "happiness": [("12",), ("6", "12"), ("6", "7", "12")],
    "surprise": [("1", "2"), ("1", "2", "5"), ("1", "2", "26"), ("1", "2", "5", "26"), ("5", "26")],
    "disgust": [("9",), ("4", "9"), ("9", "17"), ("4", "7"), ("9", "10"), ("4",)],
    "repression": [("14",), ("15",), ("17",), ("14", "17"), ("15", "17"), ("24",)],
    "fear": [("1", "4"), ("4", "7"), ("1", "2", "4"), ("4", "5")],
    "sadness": [("1", "4", "15"), ("15",), ("4", "15", "17"), ("15", "17")],
    "anger": [("4",), ("4", "7"), ("4", "7", "17"), ("4", "24")],
    "contempt": [("14",), ("12", "14")],
    "others": [
        ("4",),
        ("7",),
        ("1",),
        ("17",),
        ("6",),
        ("24",),
        ("2",),
        ("14",),
        ("12", "15"),
        ("10",),
        ("1", "4"),
        ("7", "17"),
    ],
}
# AUs that may appear weakly in a clip of another class (difficulty: class overlap)
DISTRACTORS = {0: ("6", "12", "1", "5", "26"), 1: ("4", "7", "14", "17", "1"), 2: ("4", "7", "12", "17", "6")}


def au_field(
    au: str,
    landmarks: dict[str, tuple[float, float]],
    unit: float,
    shape: tuple[int, int],
    side: str = "",
    style: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0),
) -> np.ndarray:
    """Displacement field of one AU, peak magnitude 1 pixel.

    au: FACS number as a string ('12'); side: '' (both sides), 'L' or 'R' (the subject's left/right:
    'L' is the image-right half of a frontal face). style: the subject's way of producing this AU:
    (rotation of every motion vector in radians, mirrored between the sides; anchor shift du, dv in
    face units; spread multiplier). Returns float32 (2, H, W): (dx, dy) in pixels.
    """
    rot, sdu, sdv, spread = style
    if au not in AU_PARTS:
        raise ValueError(f"unknown AU {au!r}; known: {sorted(AU_PARTS, key=int)}")
    H, W = shape
    out = np.zeros((2, H, W), np.float32)
    sides = {"": (-1, 1), "L": (1,), "R": (-1,)}[side]
    for anchor, (du, dv), (dx, dy), (su, sv), w in AU_PARTS[au]:
        for s in sides if anchor.endswith("_") else (1,):
            name = anchor + ("l" if s < 0 else "r") if anchor.endswith("_") else anchor
            ax, ay = landmarks[name]
            s_eff = s if anchor.endswith("_") else 1
            cx, cy = ax + s_eff * (du + sdu) * unit, ay + (dv + sdv) * unit
            sx, sy = su * unit * spread, sv * unit * spread
            x0, x1 = max(int(cx - 3.5 * sx), 0), min(int(cx + 3.5 * sx) + 2, W)
            y0, y1 = max(int(cy - 3.5 * sy), 0), min(int(cy + 3.5 * sy) + 2, H)
            if x0 >= x1 or y0 >= y1:
                continue
            xs = np.arange(x0, x1, dtype=np.float32)
            ys = np.arange(y0, y1, dtype=np.float32)
            g = np.exp(-0.5 * ((ys[:, None] - cy) / sy) ** 2) * np.exp(-0.5 * ((xs[None, :] - cx) / sx) ** 2)
            c, sn = np.cos(rot), np.sin(rot)
            vx, vy = s_eff * (c * dx - sn * dy), sn * dx + c * dy  # rotate, then mirror for the side
            n = np.hypot(vx, vy) or 1.0
            out[0, y0:y1, x0:x1] += w * g * vx / n
            out[1, y0:y1, x0:x1] += w * g * vy / n
    peak = float(np.sqrt((out**2).sum(0)).max())
    return out / peak if peak > 0 else out


def au_string(aus: list[tuple[str, str]], sep: str = "+") -> str:
    """[('6', ''), ('12', 'L')] -> '6+L12' (sorted by AU number)."""
    return sep.join(f"{side}{au}" for au, side in sorted(aus, key=lambda a: int(a[0])))

"""Facial regions: windows around both eyes and both mouth corners, tiled 2x2 as the released HTNet does.

Points are (x, y) in pixels of the face crop (face_size x face_size). Sources:
- 'landmarks': dlib's 68-point shape predictor (model from ``face_recognition_models``; optional,
  non-commercial licence) on the apex crop: eye centres = mean of points 36-41 / 42-47, mouth corners =
  points 48 / 54;
- 'canonical': fixed fractions of the face box (``CANONICAL``), which is what is used when no landmark
  backend is installed (the source used is recorded per sample).
Tile layout (each S/2 x S/2): [[left eye, right eye], [left mouth corner, right mouth corner]]; "left"
is image-left (the subject's right).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

REGION_NAMES = ("left_eye", "right_eye", "left_mouth_corner", "right_mouth_corner")
# (x, y) as fractions of the face crop side; tuned for a Haar box with a 10% margin and for tight crops
CANONICAL = np.array([[0.34, 0.42], [0.66, 0.42], [0.38, 0.74], [0.62, 0.74]])
NOSE_ROOT = (0.50, 0.42, 0.12)  # centre x, centre y, side (fractions): the motion-compensation window


@lru_cache(maxsize=1)
def _dlib_predictor():
    try:
        import dlib  # noqa: F401
        import face_recognition_models
    except ImportError:
        return None
    import dlib

    return dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())


def landmark_backend_available() -> bool:
    return _dlib_predictor() is not None


def _landmarks68(grey: np.ndarray) -> np.ndarray | None:
    """(68, 2) landmarks of the face filling ``grey`` (a face crop), or None without a backend."""
    pred = _dlib_predictor()
    if pred is None:
        return None
    import dlib

    h, w = grey.shape[:2]
    shape = pred(grey, dlib.rectangle(0, 0, w - 1, h - 1))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)


def resolve_source(regions: str) -> str:
    """'auto' -> 'landmarks' when a backend is installed, else 'canonical'; 'landmarks' without a
    backend is an error saying what to install."""
    if regions == "canonical":
        return "canonical"
    if landmark_backend_available():
        return "landmarks"
    if regions == "landmarks":
        raise RuntimeError(
            "regions='landmarks' needs dlib and face_recognition_models (pip install dlib "
            "face_recognition_models; non-commercial model licence); use 'canonical' or 'auto'"
        )
    return "canonical"


def region_points(face_crop: np.ndarray, source: str) -> tuple[np.ndarray, str]:
    """((4, 2) points (x, y) in crop pixels in REGION_NAMES order, source actually used)."""
    side = face_crop.shape[0]
    if source == "landmarks":
        grey = face_crop if face_crop.ndim == 2 else cv2.cvtColor(face_crop, cv2.COLOR_BGR2GRAY)
        lm = _landmarks68(grey)
        if lm is not None and np.isfinite(lm).all():
            pts = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[48], lm[54]])
            return pts, "landmarks"
        return CANONICAL * side, "canonical (landmarks failed)"
    return CANONICAL * side, "canonical"


def window_boxes(points: np.ndarray, side: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) windows of side ``side // 2`` centred on each point, shifted to lie inside the crop."""
    w = side // 2
    boxes = []
    for x, y in points:
        x0 = int(round(min(max(x - w / 2, 0), side - w)))
        y0 = int(round(min(max(y - w / 2, 0), side - w)))
        boxes.append((x0, y0, w, w))
    return boxes


def tile_regions(maps: np.ndarray, boxes, out_size: int) -> np.ndarray:
    """(C, S, S) tiling of the windows ``boxes`` cut from ``maps`` (C, F, F), each resized to S/2.

    Values are not rescaled here (the caller scales flow to the output grid).
    """
    half = out_size // 2
    c = maps.shape[0]
    out = np.zeros((c, out_size, out_size), np.float32)
    for k, (x, y, w, h) in enumerate(boxes):
        r, col = divmod(k, 2)
        for ch in range(c):
            win = maps[ch, y : y + h, x : x + w]
            out[ch, r * half : (r + 1) * half, col * half : (col + 1) * half] = cv2.resize(
                win, (half, half), interpolation=cv2.INTER_AREA
            )
    return out

"""Face box: OpenCV's bundled Haar cascade on the onset frame, one box for the whole clip.

Boxes are ``(x, y, w, h)`` in pixels of the image they were found in.
"""

from __future__ import annotations

import os
from functools import cache

import cv2
import numpy as np

CASCADE = "haarcascade_frontalface_default.xml"


class FaceNotFoundError(RuntimeError):
    """No face found by the detector (the message says in what and what to do)."""


@cache
def _cascade(name: str = CASCADE) -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, name)
    clf = cv2.CascadeClassifier(path)
    if clf.empty():
        raise RuntimeError(
            f"cannot load OpenCV's bundled face cascade {path}; reinstall opencv-contrib-python-headless<5"
        )
    return clf


def to_grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


# Tried in order until one finds a face: (cascade file, histogram-equalise?, minNeighbors). Equalisation
# helps on dark or low-contrast frames and hurts on some others, so both are tried; the alt2 cascade and
# fewer neighbours are the last resorts.
ATTEMPTS = (
    (CASCADE, False, 5),
    (CASCADE, True, 5),
    ("haarcascade_frontalface_alt2.xml", False, 5),
    ("haarcascade_frontalface_alt2.xml", True, 5),
    (CASCADE, False, 3),
)


def detect_face_how(image: np.ndarray, *, min_size_frac: float = 0.2):
    """((x, y, w, h), attempt description) of the largest frontal face, or (None, None).

    Runs the attempts of ``ATTEMPTS`` in order (scale step 1.1, faces at least ``min_size_frac`` of the
    shorter image side) and returns the first success.
    """
    grey = to_grey(image)
    side = max(16, int(min(grey.shape[:2]) * min_size_frac))
    equalised = None
    for name, eq, neighbours in ATTEMPTS:
        if eq and equalised is None:
            equalised = cv2.equalizeHist(grey)
        faces = _cascade(name).detectMultiScale(
            equalised if eq else grey, scaleFactor=1.1, minNeighbors=neighbours, minSize=(side, side)
        )
        if len(faces):
            x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
            how = f"{name.replace('haarcascade_', '').replace('.xml', '')}{' equalised' if eq else ''} n{neighbours}"
            return (int(x), int(y), int(w), int(h)), how
    return None, None


def detect_face(image: np.ndarray, *, min_size_frac: float = 0.2) -> tuple[int, int, int, int] | None:
    """The largest frontal face in ``image`` ((H, W) grey or (H, W, 3) BGR uint8) as (x, y, w, h), or None.

    OpenCV's bundled Haar cascades (cv2.data.haarcascades): ``haarcascade_frontalface_default.xml`` on
    the grey image, then on the histogram-equalised one, then ``haarcascade_frontalface_alt2.xml``, then
    the default with 3 instead of 5 neighbours (see ``ATTEMPTS``); faces at least ``min_size_frac`` of
    the shorter image side.
    """
    return detect_face_how(image, min_size_frac=min_size_frac)[0]


def expand_box(box, image_shape, margin: float) -> tuple[int, int, int, int]:
    """Square box around ``box`` enlarged by ``margin`` (fraction of its side on every side), shifted
    (not padded) to lie inside the image, shrunk only if the image is smaller."""
    x, y, w, h = box
    H, W = image_shape[:2]
    side = int(round(max(w, h) * (1 + 2 * margin)))
    side = max(1, min(side, H, W))
    cx, cy = x + w / 2, y + h / 2
    x0 = int(round(min(max(cx - side / 2, 0), W - side)))
    y0 = int(round(min(max(cy - side / 2, 0), H - side)))
    return x0, y0, side, side


def crop_resize(image: np.ndarray, box, size: int) -> np.ndarray:
    """``image[box]`` resized to (size, size) (area interpolation when shrinking)."""
    x, y, w, h = box
    crop = image[y : y + h, x : x + w]
    interp = cv2.INTER_AREA if w >= size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)

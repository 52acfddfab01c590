"""Face detection and the raw-frame path on a synthetic portrait (rendered by mer.synth, stored as PNG)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mer.preprocess import PrepConfig, detect_face, prepare_pair

FACE = Path(__file__).parent / "data" / "synthetic_face.png"  # 160x140 grey
# landmarks of that portrait (x, y) in its pixels
EYES = [(64.0, 66.5), (96.0, 66.5)]
MOUTH_RIGHT = (91.8, 98.6)


@pytest.fixture(scope="module")
def face():
    img = cv2.imread(str(FACE), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape == (140, 160)
    return img


def test_detect_face_finds_the_portrait(face):
    box = detect_face(face)
    assert box is not None
    x, y, w, h = box
    for px, py in EYES + [MOUTH_RIGHT]:
        assert x < px < x + w and y < py < y + h
    assert detect_face(cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)) == box  # BGR input too


def test_local_motion_lands_in_the_right_place(face):
    """A 1.5 px rightward bump at the image-right mouth corner shows up there in the face map and in the
    bottom-right region tile (detected face box, TV-L1 at face_size 128)."""
    H, W = face.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bump = np.exp(-((xx - MOUTH_RIGHT[0]) ** 2 + (yy - MOUTH_RIGHT[1]) ** 2) / (2 * 4.0**2))
    apex = cv2.remap(face, xx - 1.5 * bump, yy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    f, r, meta = prepare_pair(face, apex, PrepConfig(size=16, face_size=128, flow="tvl1"))
    assert meta["face_source"].startswith("haar frontalface_default")
    x0, y0, side, _ = meta["face_box"]
    expect = ((MOUTH_RIGHT[1] - y0) / side * 16, (MOUTH_RIGHT[0] - x0) / side * 16)  # (row, col) on the grid
    inner = f[0, 1:-1, 1:-1]
    row, col = np.unravel_index(inner.argmax(), inner.shape)
    assert abs(row + 1 + 0.5 - expect[0]) <= 1.5 and abs(col + 1 + 0.5 - expect[1]) <= 1.5
    tiles = [r[0, :8, :8].mean(), r[0, :8, 8:].mean(), r[0, 8:, :8].mean(), r[0, 8:, 8:].mean()]
    assert int(np.argmax(tiles)) == 3 and tiles[3] > 5 * max(tiles[0], tiles[1])

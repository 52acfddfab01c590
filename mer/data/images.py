"""Reading frames completely or not at all.

``cv2.imread`` returns an image for a JPEG cut short (libjpeg fills the missing rows grey and only prints
"Premature end of JPEG file" on stderr), so a partly written frame would be used as if it were whole.
:func:`read_image` reads the bytes, checks that the file is complete for its format, then decodes:

- JPEG: the file (after any trailing zero padding) ends with the EOI marker ``FF D9``;
- PNG: the file ends with the ``IEND`` chunk (whose CRC is fixed), and libpng decodes it (it refuses a
  bad CRC inside);
- BMP: the file is at least as long as the size its header declares;
- anything else: what OpenCV decodes (non-empty result).

A zero-byte file, a missing file and an undecodable one are refused the same way: an ``ImageError``
(a ``DatasetError``) naming the file and what is wrong with it.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from mer.data.problems import DatasetError

JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
PNG_SIG = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ImageError(DatasetError):
    """A frame that is missing, empty, truncated or not decodable (``.path``, ``.reason``)."""

    def __init__(self, path, reason: str):
        super().__init__(f"image {path}: {reason}")
        self.path, self.reason = str(path), reason


def completeness_problem(data: bytes) -> str | None:
    """Why ``data`` (a whole image file) is incomplete for its format, or None when it looks whole."""
    if not data:
        return "zero-byte file"
    if data.startswith(JPEG_SOI):
        if not data.rstrip(b"\x00").endswith(JPEG_EOI):
            return "truncated JPEG (no end-of-image marker FF D9 at the end of the file)"
    elif data.startswith(PNG_SIG):
        if not data.endswith(PNG_IEND):
            return "truncated PNG (no IEND chunk at the end of the file)"
    elif data.startswith(b"BM") and len(data) >= 6:
        declared = struct.unpack("<I", data[2:6])[0]
        if len(data) < declared:
            return f"truncated BMP ({len(data)} of the {declared} bytes its header declares)"
    return None


def read_image(path, flags: int | None = None) -> np.ndarray:
    """The image at ``path`` decoded completely (``cv2.imdecode``; default flags IMREAD_COLOR: (H, W, 3)
    uint8 BGR), or ImageError naming the file and the problem."""
    import cv2

    flags = cv2.IMREAD_COLOR if flags is None else flags
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as e:
        raise ImageError(path, f"cannot be read ({e.strerror or e})") from None
    why = completeness_problem(data)
    if why:
        raise ImageError(path, why + " (damaged or not fully written): restore the file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise ImageError(path, f"not a decodable image ({len(data)} bytes); restore the file")
    return img


def check_image(path) -> str | None:
    """None if ``path`` reads completely, else the reason (for bulk checks; nothing is raised)."""
    try:
        read_image(path, flags=-1)  # IMREAD_UNCHANGED: decode without conversion
    except ImageError as e:
        return e.reason
    return None


def file_size(path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None

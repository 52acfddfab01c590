"""mer.data.images: frames are decoded completely or refused with the file named."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mer.data import DatasetError, ImageError
from mer.data.images import check_image, completeness_problem, read_image


def _image(seed=0, shape=(32, 40, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_whole_images_read_as_cv2_does(tmp_path, ext):
    p = tmp_path / f"a{ext}"
    cv2.imwrite(str(p), _image())
    assert np.array_equal(read_image(p), cv2.imread(str(p)))
    assert np.array_equal(read_image(p, cv2.IMREAD_GRAYSCALE), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))
    assert check_image(p) is None


@pytest.mark.parametrize(
    "ext,reason", [(".jpg", "truncated JPEG"), (".png", "truncated PNG"), (".bmp", "truncated BMP")]
)
@pytest.mark.parametrize("keep", [1 / 3, 0.9])
def test_truncated_images_are_refused(tmp_path, ext, reason, keep):
    p = tmp_path / f"cut{ext}"
    cv2.imwrite(str(p), _image())
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    if ext == ".jpg":  # what this guards against: OpenCV itself returns an image for the cut JPEG
        assert cv2.imread(str(p)) is not None
    with pytest.raises(ImageError, match=rf"image .*cut{ext}: {reason}") as e:
        read_image(p)
    assert e.value.path == str(p) and "\n" not in str(e.value)
    assert check_image(p).startswith(reason)


def test_zero_byte_missing_and_garbage(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "g.png").write_bytes(b"hello, not a picture")
    with pytest.raises(ImageError, match="z.jpg: zero-byte file"):
        read_image(tmp_path / "z.jpg")
    with pytest.raises(ImageError, match="m.jpg: file not found"):
        read_image(tmp_path / "m.jpg")
    with pytest.raises(ImageError, match="g.png: not a decodable image"):
        read_image(tmp_path / "g.png")
    assert issubclass(ImageError, DatasetError)


def test_jpeg_with_trailing_padding_is_whole(tmp_path):
    p = tmp_path / "pad.jpg"
    cv2.imwrite(str(p), _image())
    p.write_bytes(p.read_bytes() + b"\x00" * 16)
    assert read_image(p).shape == (32, 40, 3)


def test_png_with_damaged_data_is_refused(tmp_path):
    p = tmp_path / "bad.png"
    cv2.imwrite(str(p), _image())
    data = bytearray(p.read_bytes())
    i = data.index(b"IDAT") + 20
    data[i : i + 8] = b"\xff" * 8  # corrupt the compressed stream (its CRC no longer matches)
    p.write_bytes(bytes(data))
    assert completeness_problem(bytes(data)) is None  # complete, but ...
    with pytest.raises(ImageError, match="bad.png: not a decodable image"):
        read_image(p)

"""The public HTNet release's five facial landmarks per sample, and the 28x28 tiles they place.

The release (``wangzhifengharrison/HTNet``, ``main_HTNet.py``, ``whole_face_block_coordinates`` and
``crop_optical_flow_block``) does, for every sample:

1. read the apex face crop (224x224 JPEG) with ``cv2.imread`` (BGR) and resize it to 28x28 with
   ``cv2.INTER_AREA``;
2. run facenet-pytorch's ``MTCNN(margin=0, image_size=28, select_largest=True, post_process=False)``
   ``.detect(face, landmarks=True)`` on that BGR array (MTCNN expects RGB; the release passes BGR) and take
   the landmarks of the largest face: (5, 2) points (x, y) in the order left eye, right eye, nose, left
   mouth corner, right mouth corner; where MTCNN finds no face, the fixed set ``FALLBACK_LANDMARKS``;
3. clip every coordinate to [7, 21] and truncate to int (``clip_landmarks``);
4. cut five 14x14 crops from the 28x28 flow image, crop k = ``flow[p[k][0]-7 : p[k][0]+7,
   p[k][1]-7 : p[k][1]+7]``: the point's **x** indexes the **rows** and its y the columns (the release's
   convention, kept exactly);
5. tile ``[[crop 0, crop 1], [crop 3, crop 4]]`` (``cv2.hconcat``/``vconcat``; the nose crop 2 is unused).
   The release calls crops 0, 1, 3, 4 "left eye, left lips, right eye, right lips"; by MTCNN's order they
   are left eye, right eye, left mouth corner, right mouth corner.

``mtcnn_landmarks`` reruns step 2 on CPU with whatever facenet-pytorch is installed. facenet-pytorch
pins an old torch, so install it without its dependencies (``pip install --no-deps
facenet-pytorch==2.5.2``, the release's version); its ``detect`` needs only ``batched_nms`` from
torchvision, which :func:`facenet_mtcnn` supplies from a small torch implementation (``batched_nms``
below) while it imports facenet-pytorch, without installing torchvision.
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np

#: the release's landmarks where MTCNN finds no face, (5, 2) (x, y) in pixels of the 28x28 face
FALLBACK_LANDMARKS = np.array(
    [
        [9.528073, 11.062551],
        [21.396168, 10.919773],
        [15.380184, 17.380562],
        [10.255435, 22.121233],
        [20.583706, 22.25584],
    ]
)
#: the release clips every landmark coordinate to [CLIP_LO, CLIP_HI] so that every 14x14 crop fits
CLIP_LO, CLIP_HI = 7, 21
HALF = 7  # half the side of a crop
TILE_ORDER = ((0, 1), (3, 4))  # rows of the tiling, in crops (landmark indices)
FACE_SIZE = 28


def clip_landmarks(points) -> np.ndarray:
    """(5, 2) float landmarks -> (5, 2) int64 as the release clips them (to [7, 21], then truncated)."""
    p = np.array(points, copy=True)
    if p.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2), got {p.shape}")
    p[p < CLIP_LO] = CLIP_LO
    p[p > CLIP_HI] = CLIP_HI
    return p.astype(np.int64)


def release_crops(flow: np.ndarray, landmarks: np.ndarray) -> list[np.ndarray]:
    """The release's five (14, 14, C) crops of ``flow`` (28, 28, C): crop k = flow[r-7:r+7, c-7:c+7] with
    (r, c) = landmarks[k] (x as the row, y as the column, as the release indexes)."""
    lm = np.asarray(landmarks)
    if lm.shape != (5, 2) or lm.min() < HALF or lm.max() > FACE_SIZE - HALF:
        raise ValueError(
            f"landmarks must be (5, 2) ints in [{HALF}, {FACE_SIZE - HALF}] (clip_landmarks), got {lm.tolist()}"
        )
    return [flow[r - HALF : r + HALF, c - HALF : c + HALF] for r, c in lm.astype(np.int64)]


def release_tiles(flow: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(28, 28, C) model input of the release: crops [[0, 1], [3, 4]] of :func:`release_crops` tiled.

    flow: (28, 28, C) uint8 (as ``cv2.imread`` returns the flow PNG); landmarks: (5, 2) clipped ints.
    """
    if flow.shape[:2] != (FACE_SIZE, FACE_SIZE):
        raise ValueError(f"flow must be ({FACE_SIZE}, {FACE_SIZE}, C), got {flow.shape}")
    crops = release_crops(flow, landmarks)
    return np.concatenate([np.concatenate([crops[a], crops[b]], axis=1) for a, b in TILE_ORDER], axis=0)


# ----------------------------------------------------------------------------------------- MTCNN


def nms(boxes, scores, iou_threshold: float):
    """Indices kept by greedy non-maximum suppression, highest score first (torchvision.ops.nms semantics:
    boxes (N, 4) x1, y1, x2, y2; areas (x2-x1)*(y2-y1); a box is dropped when its IoU with a kept one is
    > iou_threshold; scores sorted stably, descending)."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """torchvision.ops.boxes.batched_nms (its coordinate trick): NMS within each value of ``idxs``."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


class _NoDownloads:
    """Stands in for ``requests.adapters.HTTPAdapter`` when requests is not installed: facenet-pytorch
    imports it for its InceptionResnet weight downloads, which MTCNN never makes (its weights ship in the
    wheel; nothing in mer downloads at run time)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("mer imported facenet-pytorch without requests: its downloads are not available")


@contextlib.contextmanager
def _facenet_import_shim():
    """Temporarily provide ``torchvision.ops.boxes.batched_nms`` (and an empty
    ``torchvision.transforms.functional``) in sys.modules, and, when requests is not installed, a
    ``requests`` without downloads (facenet-pytorch imports it at import time); the previous entries are
    restored afterwards."""
    import importlib.util

    names = [
        "torchvision",
        "torchvision.ops",
        "torchvision.ops.boxes",
        "torchvision.transforms",
        "torchvision.transforms.functional",
    ]
    no_requests = "requests" not in sys.modules and importlib.util.find_spec("requests") is None
    if no_requests:
        names += ["requests", "requests.adapters"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    if no_requests:
        mods["requests"].adapters = mods["requests.adapters"]
        mods["requests"].__path__ = []
        mods["requests.adapters"].HTTPAdapter = _NoDownloads
    mods["torchvision.ops.boxes"].batched_nms = batched_nms
    mods["torchvision.ops.boxes"].nms = nms
    mods["torchvision"].ops, mods["torchvision"].transforms = mods["torchvision.ops"], mods["torchvision.transforms"]
    mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    mods["torchvision"].__path__ = []  # a package, for the import system
    mods["torchvision.ops"].__path__ = []
    mods["torchvision.transforms"].__path__ = []
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


INSTALL_HINT = (
    "pip install --no-deps facenet-pytorch==2.5.2 (the release's version; --no-deps keeps the "
    "installed torch: facenet-pytorch pins an old one, and torchvision is not needed)"
)


def facenet_mtcnn(device: str = "cpu"):
    """facenet-pytorch's MTCNN as the release builds it (margin 0, image_size 28, select_largest,
    no post-processing). Raises ImportError naming the install command when facenet-pytorch is absent."""
    if "facenet_pytorch" in sys.modules:
        from facenet_pytorch import MTCNN
    else:
        import importlib.util

        if importlib.util.find_spec("facenet_pytorch") is None:
            raise ImportError(
                f"landmarks='mtcnn' needs facenet-pytorch: {INSTALL_HINT}; or use "
                "landmarks='shipped' (the same computation, shipped with mer)"
            )
        with _facenet_import_shim():
            from facenet_pytorch import MTCNN
    return MTCNN(margin=0, image_size=FACE_SIZE, select_largest=True, post_process=False, device=device)


def apex_face_28(path) -> np.ndarray:
    """(28, 28, 3) uint8 BGR: the apex face read with cv2.imread and resized with INTER_AREA (release)."""
    import cv2

    from mer.data.images import read_image

    img = read_image(path)  # = cv2.imread's array, for a complete file (else ImageError)
    return cv2.resize(img, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)


def mtcnn_landmarks(faces28, mtcnn=None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(raw (N, 5, 2) float32, found (N,) bool) for (28, 28, 3) BGR faces: MTCNN's landmarks of the
    largest face (``detect`` sorts by area with select_largest), ``FALLBACK_LANDMARKS`` where none."""
    import torch
    from tqdm.auto import tqdm

    mtcnn = mtcnn or facenet_mtcnn()
    raw = np.zeros((len(faces28), 5, 2), np.float32)
    found = np.zeros(len(faces28), bool)
    with torch.no_grad():
        for i, face in enumerate(tqdm(faces28, desc="MTCNN", unit="face", disable=not progress)):
            _, _, points = mtcnn.detect(np.ascontiguousarray(face), landmarks=True)
            if points is None:
                raw[i] = FALLBACK_LANDMARKS
            else:
                raw[i], found[i] = points[0], True
    return raw, found

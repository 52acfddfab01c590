"""Recompute the HTNet release's MTCNN landmarks on CPU and write mer/data/lists/htnet_release_landmarks.csv.

    pip install --no-deps facenet-pytorch==2.5.2     # the release's version; keeps the installed torch
    python scripts/htnet_release_landmarks.py ../shared/data/htnet_release
    python scripts/htnet_release_landmarks.py /data/HTNet --out /tmp/lm.csv --check   # compare with shipped

What it reproduces (``main_HTNet.py``, ``whole_face_block_coordinates``): each apex face crop read with
cv2.imread (BGR), resized to 28x28 with INTER_AREA, given to facenet-pytorch's MTCNN(margin=0,
image_size=28, select_largest=True, post_process=False).detect(..., landmarks=True); the largest face's
five points, or the release's fixed fallback set where MTCNN finds no face; then clipped to [7, 21] and
truncated to int. torchvision is not needed: mer.data.htnet_landmarks supplies the one function
facenet-pytorch's detect uses from it (batched_nms) while importing facenet-pytorch.

Columns: flow_file (the flow image's name, key), face_file, source (mtcnn | fallback), x0,y0 .. x4,y4
(the clipped ints the release uses; points in MTCNN's order left eye, right eye, nose, left and right
mouth corner), raw_x0,raw_y0 .. (MTCNN's float32 output, or the fallback set).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mer.data.htnet_landmarks import (  # noqa: E402  (after the sys.path line above)
    apex_face_28,
    clip_landmarks,
    facenet_mtcnn,
    mtcnn_landmarks,
)
from mer.data.htnet_release import (  # noqa: E402
    SHIPPED_LANDMARKS,
    load_htnet_release,
    read_shipped_landmarks,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="the HTNet release (a clone, or a folder holding its datasets)")
    ap.add_argument("--out", default=str(SHIPPED_LANDMARKS), help=f"CSV to write (default {SHIPPED_LANDMARKS})")
    ap.add_argument("--check", action="store_true", help="also compare with the shipped landmarks")
    args = ap.parse_args(argv)

    try:
        mtcnn = facenet_mtcnn("cpu")
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rel = load_htnet_release(args.root, landmarks="fallback")  # validated sheet, files and folds
    t0 = time.perf_counter()
    raw, found = mtcnn_landmarks([apex_face_28(p) for p in rel.face_paths], mtcnn, progress=True)
    dt = time.perf_counter() - t0
    clipped = np.stack([clip_landmarks(p) for p in raw])
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            ["flow_file", "face_file", "source"]
            + [f"{a}{k}" for k in range(5) for a in "xy"]
            + [f"raw_{a}{k}" for k in range(5) for a in "xy"]
        )
        for i, name in enumerate(rel.names):
            w.writerow(
                [name, Path(rel.face_paths[i]).name, "mtcnn" if found[i] else "fallback"]
                + [int(v) for v in clipped[i].ravel()]
                + [str(v) for v in raw[i].astype(np.float32).ravel()]
            )
    tmp.replace(out)
    print(
        f"MTCNN found a face in {int(found.sum())} of {len(found)} apex faces ({dt:.1f} s on CPU); "
        f"fallback landmarks for {int((~found).sum())}; wrote {out}"
    )
    if args.check:
        shipped = read_shipped_landmarks()
        diff = [n for i, n in enumerate(rel.names) if not np.array_equal(shipped[n][0], clipped[i])]
        print(f"{len(diff)} sample(s) differ from the shipped landmarks" + (f": {diff[:10]}" if diff else ""))
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TEMPORARY stand-in for mer.data.load_htnet_release (the data helper's loader, not on main yet): reads
the release's PNGs, sheet and fold list directly, tiles with the release's fallback landmarks. Delete once
the real loader has landed."""
from __future__ import annotations

import csv
import types
from pathlib import Path

import cv2
import numpy as np

FALLBACK = np.array([[9.528073, 11.062551], [21.396168, 10.919773], [15.380184, 17.380562],
                     [10.255435, 22.121233], [20.583706, 22.25584]])


def load_htnet_release(root, *, landmarks="fallback"):
    root = Path(root)
    rows = list(csv.DictReader(open(root / "combined_3_class2_for_optical_flow.csv")))
    names = np.array([f"{r['sub']}_{r['filename_o']} .png" for r in rows])
    flow = np.stack([cv2.imread(str(root / "STSNet_whole_norm_u_v_os" / n)) for n in names])
    lm = np.clip(FALLBACK, 7, 21).astype(int)

    def crop(img, c):
        return img[c[0] - 7:c[0] + 7, c[1] - 7:c[1] + 7]

    tiles = np.stack([np.concatenate([np.concatenate([crop(f, lm[0]), crop(f, lm[1])], 1),
                                      np.concatenate([crop(f, lm[3]), crop(f, lm[4])], 1)], 0) for f in flow])
    index = {n: i for i, n in enumerate(names)}
    folds: dict = {}
    for line in open(root / "loso_test_lists.txt").read().splitlines():
        if line.strip():
            subject, _, _, name = line.split("/", 3)
            folds.setdefault(subject, []).append(index[name])
    return types.SimpleNamespace(
        names=names, subjects=np.array([r["sub"] for r in rows]), datasets=np.array([r["dataset"] for r in rows]),
        clips=np.array([r["filename_o"] for r in rows]), labels=np.array([int(r["label"]) for r in rows], np.int64),
        flow=flow, tiles=tiles, folds={k: np.array(v, np.int64) for k, v in folds.items()})

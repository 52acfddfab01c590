"""Per-sample preprocessing time of each flow method on one core.

    OMP_NUM_THREADS=1 python -m mer.preprocess.timing [--face-sizes 64 128 160] [--repeats 7]

Times ``compute_flow`` alone and the whole per-sample arithmetic (flow + strain + resize + regions) on a
smooth random texture moved by a sub-pixel shift (never on zeros), median of the repeats, one thread.
Image reading and face detection come on top (Haar on a 280x320 frame: about 20 ms).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np


def texture_pair(size: int, dx: float = 0.6, dy: float = -0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2.0).astype(np.float64)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 235 + 10
    ky, kx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    moved = np.real(np.fft.ifft2(np.fft.fft2(tex) * np.exp(-2j * np.pi * (kx * dx + ky * dy))))
    return tex.round().astype(np.uint8), np.clip(moved.round(), 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    from mer.preprocess.config import PrepConfig
    from mer.preprocess.flow import METHODS, compute_flow
    from mer.preprocess.pipeline import flow_maps

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--face-sizes", type=int, nargs="+", default=[64, 128, 160])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    print("| face_size | method | flow (ms) | flow + strain + resize + regions (ms) |")
    print("|---|---|---|---|")
    for fs in args.face_sizes:
        a, b = texture_pair(fs)
        for m in METHODS:
            cfg = PrepConfig(face_size=fs, flow=m, regions="canonical")
            flow_maps(a, b, cfg, "canonical")  # warm-up
            tf, tt = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                compute_flow(a, b, m)
                tf.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                flow_maps(a, b, cfg, "canonical")
                tt.append(time.perf_counter() - t0)
            print(f"| {fs} | {m} | {np.median(tf) * 1e3:.1f} | {np.median(tt) * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

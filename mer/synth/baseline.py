"""A simple reference baseline for the synthetic data: mean optical flow per facial region + logistic
regression, leave-one-subject-out over the composite, pooled UF1/UAR.

    python -m mer.synth.baseline DIR [--flow dis|farneback|tvl1] [--workers N]

Per sample: face box by the package's detector (``mer.preprocess.face.detect_face``) on the onset
frame, square crop with a 10% margin resized to 128 px, optical flow onset -> apex (SMIC: the middle
frame, the loaders' convention), then the mean (u, v) in 10 fixed regions of the crop (brows, eyes,
cheeks, nose, mouth corners, chin) -> 20 features. Classifier: standardisation + multinomial logistic
regression (C=1), one fold per subject (68 folds on the composite), fitted on the training subjects only.
It is deliberately simple: the synthetic data's difficulty is calibrated so that it lands clearly
above chance and clearly below a real model (docs/synth.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

CROP = 128
# (x0, y0, x1, y1) as fractions of the face crop (Haar box + 10% margin)
REGIONS = {
    "brow_left": (0.18, 0.22, 0.45, 0.36),
    "brow_right": (0.55, 0.22, 0.82, 0.36),
    "eye_left": (0.22, 0.35, 0.45, 0.47),
    "eye_right": (0.55, 0.35, 0.78, 0.47),
    "cheek_left": (0.15, 0.48, 0.38, 0.65),
    "cheek_right": (0.62, 0.48, 0.85, 0.65),
    "nose": (0.42, 0.45, 0.58, 0.64),
    "mouth_left": (0.27, 0.66, 0.45, 0.82),
    "mouth_right": (0.55, 0.66, 0.73, 0.82),
    "chin": (0.38, 0.82, 0.62, 0.95),
}


def region_features(flow: np.ndarray) -> np.ndarray:
    """(S, S, 2) flow of a face crop -> (2 * len(REGIONS),) mean (u, v) per region."""
    S = flow.shape[0]
    out = []
    for x0, y0, x1, y1 in REGIONS.values():
        patch = flow[int(y0 * S) : int(y1 * S), int(x0 * S) : int(x1 * S)]
        out += [float(patch[..., 0].mean()), float(patch[..., 1].mean())]
    return np.asarray(out, np.float32)


def sample_features(sample, flow_method: str = "dis") -> tuple[np.ndarray, bool]:
    """(features, face found) for one :class:`mer.data.Sample`; without a face, the frame centre is used."""
    import cv2

    from mer.preprocess.face import crop_resize, detect_face, expand_box
    from mer.preprocess.flow import compute_flow

    cv2.setNumThreads(1)
    onset = cv2.imread(sample.frame_path(sample.onset), cv2.IMREAD_GRAYSCALE)
    apex = cv2.imread(sample.frame_path(sample.apex), cv2.IMREAD_GRAYSCALE)
    if onset is None or apex is None:
        raise RuntimeError(f"{sample.uid}: cannot read the onset/apex frames")
    box = detect_face(onset)
    found = box is not None
    if box is None:
        H, W = onset.shape
        box = (W // 4, H // 4, W // 2, H // 2)
    box = expand_box(box, onset.shape, 0.1)
    a, b = crop_resize(onset, box, CROP), crop_resize(apex, box, CROP)
    return region_features(compute_flow(a, b, flow_method)), found


def _feat(args):
    return sample_features(*args)


def load_composite(root: Path):
    import warnings

    from mer.data import megc2019_composite
    from mer.data.problems import DatasetWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # estimated apexes: expected here
        return megc2019_composite(
            casme2=root / "casme2", samm=root / "samm", smic=root / "smic", sample_list=root / "megc2019_composite.csv"
        )


def loso_predict(X: np.ndarray, y: np.ndarray, groups: list) -> np.ndarray:
    """Leave-one-subject-out predictions of standardisation + logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty_like(y)
    groups_arr = np.array([f"{a}/{b}" for a, b in groups])
    for g in sorted(set(groups_arr)):
        test = groups_arr == g
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        clf.fit(X[~test], y[~test])
        pred[test] = clf.predict(X[test])
    return pred


def run_baseline(root, flow_method: str = "dis", workers: int = 1, progress: bool = True) -> dict:
    """Features, LOSO predictions and scores for the synthetic composite at ``root``."""
    from tqdm import tqdm

    from mer.metrics import uf1_uar

    root = Path(root)
    samples = load_composite(root)
    t0 = time.perf_counter()
    jobs = [(s, flow_method) for s in samples]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            res = list(tqdm(pool.imap(_feat, jobs, chunksize=4), total=len(jobs), disable=not progress, desc="flow"))
    else:
        res = [_feat(j) for j in tqdm(jobs, disable=not progress, desc="flow")]
    X = np.stack([r[0] for r in res])
    found = np.array([r[1] for r in res])
    y = np.array([s.label for s in samples])
    groups = [s.subject_key for s in samples]
    pred = loso_predict(X, y, groups)
    uf1, uar = uf1_uar(y, pred)
    per = {}
    for ds in ("casme2", "samm", "smic"):
        m = np.array([s.dataset == ds for s in samples])
        per[ds] = uf1_uar(y[m], pred[m])
    return {
        "n": len(samples),
        "subjects": len(set(groups)),
        "uf1": uf1,
        "uar": uar,
        "per_dataset": per,
        "face_found": float(found.mean()),
        "flow": flow_method,
        "seconds": time.perf_counter() - t0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mer.synth.baseline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("root", type=Path, help="output folder of `mer synth` (holds casme2/, samm/, smic/)")
    ap.add_argument("--flow", default="dis", choices=("dis", "farneback", "tvl1"), help="optical flow method")
    ap.add_argument("--workers", type=int, default=1, help="processes for the flow computation")
    args = ap.parse_args(argv)
    if not (args.root / "megc2019_composite.csv").is_file():
        print(
            f"error: {args.root} has no megc2019_composite.csv; generate data first: mer synth --out {args.root}",
            file=sys.stderr,
        )
        return 2
    r = run_baseline(args.root, args.flow, args.workers)
    print(
        f"baseline (region mean flow + logistic regression, LOSO {r['subjects']} subjects, {r['n']} samples, "
        f"flow {r['flow']}): UF1 {r['uf1']:.3f}  UAR {r['uar']:.3f}  face found {r['face_found']:.1%}"
    )
    for ds, (f, u) in r["per_dataset"].items():
        print(f"  {ds:7s} UF1 {f:.3f}  UAR {u:.3f}")
    print(f"({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

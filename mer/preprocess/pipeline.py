"""The preprocessing pipeline: face crop -> onset/apex -> optical flow -> strain -> whole face + regions.

Output per sample (float32):
    face    (3, S, S)  whole face: channel 0 = u (horizontal flow, + right), 1 = v (vertical flow,
                       + down), 2 = optical strain
    regions (3, S, S)  the same channels in four S/2 windows tiled [[left eye, right eye],
                       [left mouth corner, right mouth corner]]
Units: u and v in pixels of the S x S output grid (flow computed at face_size, multiplied by
S / face_size); strain dimensionless (computed at face_size). No dataset normalisation: the trainer
normalises with training-fold statistics.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mer.data.images import read_image as read_whole_image
from mer.preprocess.cache import Cache, sample_key
from mer.preprocess.config import PrepConfig
from mer.preprocess.face import (
    FaceNotFoundError,
    crop_resize,
    detect_face_how,
    expand_box,
    to_grey,
)
from mer.preprocess.flow import compute_flow
from mer.preprocess.regions import (
    NOSE_ROOT,
    REGION_NAMES,
    region_points,
    resolve_source,
    tile_regions,
    window_boxes,
)
from mer.preprocess.strain import optical_strain


class PrepError(RuntimeError):
    """Some samples could not be prepared (the message lists each and why)."""

    def __init__(self, message: str, failed=()):
        super().__init__(message)
        self.failed = list(failed)


def read_image(path) -> np.ndarray:
    """(H, W, 3) uint8 BGR, decoded completely; a missing, empty, truncated or undecodable frame is an
    ``ImageError`` naming the file (see :mod:`mer.data.images`)."""
    return read_whole_image(path)


def _max_diff_apex(sample, box, cfg: PrepConfig) -> int:
    numbers = sample.frame_numbers()
    onset = to_grey(crop_resize(read_image(sample.frames[0]), box, cfg.face_size)).astype(np.float32)
    diffs = []
    for p in sample.frames:
        g = to_grey(crop_resize(read_image(p), box, cfg.face_size)).astype(np.float32)
        diffs.append(float(np.abs(g - onset).mean()))
    return numbers[int(np.argmax(diffs))]


def flow_maps(onset_crop: np.ndarray, apex_crop: np.ndarray, cfg: PrepConfig, region_source: str):
    """(face (3,S,S), regions (3,S,S), info) from face crops (face_size x face_size, grey or BGR)."""
    t0 = time.perf_counter()
    flow = compute_flow(onset_crop, apex_crop, cfg.flow)  # (F, F, 2)
    t_flow = time.perf_counter() - t0
    F = cfg.face_size
    info = {}
    if cfg.motion_compensation:
        cx, cy, s = NOSE_ROOT
        half = max(1, int(round(s * F / 2)))
        x, y = int(round(cx * F)), int(round(cy * F))
        ref = flow[y - half : y + half, x - half : x + half].reshape(-1, 2).mean(0)
        flow = flow - ref[None, None, :]
        info["motion_compensation"] = {
            "subtracted": [float(ref[0]), float(ref[1])],
            "window": [x - half, y - half, 2 * half, 2 * half],
        }
    u, v = flow[..., 0], flow[..., 1]
    strain = optical_strain(u, v)
    maps = np.stack([u, v, strain]).astype(np.float32)  # (3, F, F)
    scale = np.array([cfg.size / F, cfg.size / F, 1.0], np.float32)[:, None, None]
    face = np.stack([cv2.resize(m, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA) for m in maps])
    face = face * scale
    points, used = region_points(apex_crop, region_source)
    boxes = window_boxes(points, F)
    regions = tile_regions(maps, boxes, cfg.size) * scale
    info.update(
        {
            "region_source": used,
            "region_points": points.round(2).tolist(),
            "region_boxes": {n: list(b) for n, b in zip(REGION_NAMES, boxes, strict=True)},
            "flow": cfg.flow,
            "seconds_flow": round(t_flow, 4),
        }
    )
    return face.astype(np.float32), regions.astype(np.float32), info


def face_box_for(image: np.ndarray, cfg: PrepConfig, cropped: bool, what: str, fallbacks=()):
    """(box (x, y, w, h), how) for ``image``: the whole frame for dataset crops / face='full', else the
    Haar box (on ``image``, or else on the first of ``fallbacks`` [(image, name)] where a face is found),
    enlarged by face_margin and made square."""
    h, w = image.shape[:2]
    if cfg.face == "full" or (cfg.face == "auto" and cropped):
        # the whole frame, resized to face_size x face_size (a non-square crop is stretched, as the
        # field does with the datasets' own crops; nothing is cut off)
        return (0, 0, w, h), ("full frame" if cfg.face == "full" else "dataset crop")
    for img, name in [(image, ""), *fallbacks]:
        box, how = detect_face_how(img)
        if box is not None:
            return expand_box(box, image.shape, cfg.face_margin), f"haar {how}" + (f" on the {name}" if name else "")
    tried = " and ".join([what, *(f"the {n}" for _, n in fallbacks)])
    raise FaceNotFoundError(
        f"no face found in {tried} by OpenCV's Haar cascades (frontalface default/alt2). If the frames are "
        "already face crops, use PrepConfig(face='full') (CLI --face full; `mer predict`: --cropped); "
        "otherwise check that they show a frontal face."
    )


class _LazyFrame:
    """A one-element fallback list [(image, name)] whose image is read only when iterated."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name

    def __iter__(self):
        yield read_image(self.path), self.name


def process_sample(sample, cfg: PrepConfig, region_source: str):
    """(face, regions, meta) for one Sample (no cache)."""
    t0 = time.perf_counter()
    onset_img = read_image(sample.frames[0])
    box, how = face_box_for(
        onset_img,
        cfg,
        sample.cropped,
        f"the onset frame {sample.frames[0]}",
        fallbacks=_LazyFrame(sample.frame_path(sample.apex), "apex frame"),
    )
    apex = sample.apex
    if sample.apex_is_estimated and cfg.smic_apex == "middle":
        apex = sample.onset + (sample.offset - sample.onset) // 2
        if apex in sample.missing_frames:
            apex = sample.apex
    elif sample.apex_is_estimated and cfg.smic_apex == "max_diff":
        apex = _max_diff_apex(sample, box, cfg)
    apex_img = read_image(sample.frame_path(apex))
    if apex_img.shape != onset_img.shape:
        raise ValueError(f"onset {onset_img.shape} and apex {apex_img.shape} frames differ in size")
    on = to_grey(crop_resize(onset_img, box, cfg.face_size))
    ap = to_grey(crop_resize(apex_img, box, cfg.face_size))
    face, regions, info = flow_maps(on, ap, cfg, region_source)
    meta = {
        "uid": sample.uid,
        "face_box": list(box),
        "face_source": how,
        "onset": sample.onset,
        "apex": int(apex),
        "apex_is_estimated": sample.apex_is_estimated,
        "frame_size": list(onset_img.shape[:2]),
        **info,
        "seconds_total": round(time.perf_counter() - t0, 4),
    }
    return face, regions, meta


def prepare_pair(onset_img, apex_img, cfg: PrepConfig | None = None, *, cropped: bool = False):
    """(face (3,S,S), regions (3,S,S), meta) for one onset/apex pair (paths or BGR/grey arrays).

    cropped: the images are already face crops (no detection). Raises FaceNotFoundError when no face is
    found in the onset image nor in the apex image.
    """
    cfg = cfg or PrepConfig()
    a = read_image(onset_img) if isinstance(onset_img, (str, os.PathLike)) else np.asarray(onset_img)
    b = read_image(apex_img) if isinstance(apex_img, (str, os.PathLike)) else np.asarray(apex_img)
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"onset {a.shape[:2]} and apex {b.shape[:2]} images differ in size")
    box, how = face_box_for(a, cfg, cropped, "the onset image", fallbacks=[(b, "apex image")])
    on = to_grey(crop_resize(a, box, cfg.face_size))
    ap = to_grey(crop_resize(b, box, cfg.face_size))
    face, regions, info = flow_maps(on, ap, cfg, resolve_source(cfg.regions))
    return face, regions, {"face_box": list(box), "face_source": how, **info}


# ----------------------------------------------------------------------------------------- batch


@dataclass
class PreparedSet:
    """Prepared inputs, row i belonging to ``samples[i]``.

    face, regions: (M, 3, S, S) float32 (channels u, v, strain; see the module docstring for units).
    meta: per-sample dicts (face box, region boxes and source, flow method, apex used, timing, cache key).
    failed: (Sample, reason) of samples excluded with on_error='warn'.
    """

    samples: list
    face: np.ndarray
    regions: np.ndarray
    meta: list[dict]
    cfg: PrepConfig
    failed: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def subjects(self) -> list[tuple[str, str]]:
        """(dataset, subject) of each row: the groups of subject-wise protocols."""
        return [(s.dataset, s.subject) for s in self.samples]

    @property
    def datasets(self) -> np.ndarray:
        return np.array([s.dataset for s in self.samples])

    @property
    def labels(self) -> np.ndarray:
        """(M,) int64 labels, -1 where a sample has none."""
        return np.array([-1 if s.label is None else s.label for s in self.samples], np.int64)

    def save(self, path) -> None:
        """Write an .npz with face, regions, labels, sample ids and the config (for inspection/reuse)."""
        import json

        np.savez(
            path,
            face=self.face,
            regions=self.regions,
            labels=self.labels,
            uid=np.array([s.uid for s in self.samples]),
            cfg=np.array(json.dumps(self.cfg.to_dict())),
            meta=np.array(json.dumps(self.meta, default=str)),
        )


def _init_worker():
    import signal

    cv2.setNumThreads(1)
    # Ctrl-C reaches the whole process group: the parent alone handles it (and ends the workers), so a
    # worker never turns it into a failed sample and goes on with the queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame):  # a worker ended by _stop_pool: leave no temporary file, exit now
    from mer.preprocess.cache import remove_unfinished_write

    remove_unfinished_write()
    os._exit(128 + signum)


def _stop_pool(ex: ProcessPoolExecutor, cache_dir) -> None:
    """End a process pool now: cancel the queue and terminate the workers (an entry being written is a
    temporary file that is never moved into place; see Cache.save), then delete the temporary files of
    workers that had to be killed (they could not delete their own)."""
    procs = list((getattr(ex, "_processes", None) or {}).values())  # shutdown() forgets them
    ex.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()  # SIGTERM: a worker in Python code deletes its temporary file and exits
    deadline = time.monotonic() + 0.3
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:  # one inside a long OpenCV call runs Python handlers only after it: kill it
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    from mer.io import remove_writes_of

    for proc in procs:  # (a worker ended by SIGTERM deleted its own; this finds nothing for it)
        remove_writes_of(proc.pid, cache_dir)


def _work(sample, cfg: PrepConfig, region_source: str, cache_dir: str, key: str):
    try:
        face, regions, meta = process_sample(sample, cfg, region_source)
    except Exception as e:
        return key, None, None, f"{type(e).__name__}: {e}"
    meta["cache_key"] = key
    Cache(cache_dir).save(key, face, regions, meta)
    return key, face, regions, meta


def prepare(
    samples,
    cfg: PrepConfig | None = None,
    cache_dir="~/.cache/mer/prepared",
    *,
    workers: int = 1,
    progress: bool = True,
    on_error: str = "raise",
) -> PreparedSet:
    """Prepare ``samples`` (list of mer.data.Sample) with ``cfg``, using and filling the cache.

    workers: processes for the samples not yet cached (1: in this process). on_error: 'raise' -> one
    PrepError listing every failed sample (the others are cached, so a rerun is fast); 'warn' -> a
    warning and the failed samples excluded (``PreparedSet.failed``).
    """
    from tqdm.auto import tqdm

    cfg = cfg or PrepConfig()
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
    samples = list(samples)
    uids = [s.uid for s in samples]
    if len(set(uids)) != len(uids):
        dup = sorted({u for u in uids if uids.count(u) > 1})
        raise ValueError(f"duplicate samples given to prepare: {dup[:10]}")
    source = resolve_source(cfg.regions)
    cfg_key = {**cfg.to_dict(), "regions": source}
    cache = Cache(Path(cache_dir).expanduser())
    cache.remove_stale_temp()
    keys = [sample_key(s, cfg_key) for s in samples]
    results: dict[str, tuple] = {}
    for k in keys:
        hit = cache.load(k)
        if hit is not None:
            results[k] = hit
    todo = [(s, k) for s, k in zip(samples, keys, strict=True) if k not in results]
    errors: dict[str, str] = {}
    bar = tqdm(
        total=len(samples),
        initial=len(samples) - len(todo),
        desc=f"prepare ({cfg.flow})",
        unit="sample",
        disable=not progress,
    )
    try:
        if workers <= 1 or len(todo) <= 1:
            for s, k in todo:
                out = _work(s, cfg, source, str(cache.root), k)
                _collect(out, results, errors)
                bar.update()
        else:
            import multiprocessing as mp

            # spawn by default: forking a process that holds OpenMP/OpenCV/torch threads can deadlock
            # the children (seen in CI). Scripts calling prepare(workers>1) need an
            # `if __name__ == "__main__":` guard; MER_MP_START=fork|forkserver overrides.
            method = os.environ.get("MER_MP_START") or "spawn"
            ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method), initializer=_init_worker)
            try:
                futs = [ex.submit(_work, s, cfg, source, str(cache.root), k) for s, k in todo]
                for f in as_completed(futs):
                    _collect(f.result(), results, errors)
                    bar.update()
            except BaseException:  # Ctrl-C or a dead worker: stop now, keep what is cached
                _stop_pool(ex, cache.root)
                raise
            ex.shutdown(wait=True)
    finally:
        bar.close()
    failed = [(s, errors[k]) for s, k in zip(samples, keys, strict=True) if k in errors]
    if failed:
        if len(failed) == 1:  # one line
            msg = f"sample {failed[0][0].uid} (1 of {len(samples)}) could not be prepared: {failed[0][1]}"
            fix, done = (
                (" The others are cached. Fix it, or pass on_error='warn' to exclude it (it is counted)."),
                " Excluded (on_error='warn').",
            )
        else:
            lines = "\n".join(f"  - {s.uid}: {why}" for s, why in failed)
            msg = f"{len(failed)} of {len(samples)} sample(s) could not be prepared:\n{lines}"
            fix, done = (
                ("\nThe others are cached. Fix these, or pass on_error='warn' to exclude them (they are counted)."),
                "\nExcluded (on_error='warn').",
            )
        if on_error == "raise":
            raise PrepError(msg + fix, failed)
        warnings.warn(msg + done, RuntimeWarning, stacklevel=2)
    ok = [(s, results[k]) for s, k in zip(samples, keys, strict=True) if k in results]
    S = cfg.size
    face = np.stack([r[0] for _, r in ok]) if ok else np.zeros((0, 3, S, S), np.float32)
    regions = np.stack([r[1] for _, r in ok]) if ok else np.zeros((0, 3, S, S), np.float32)
    return PreparedSet([s for s, _ in ok], face, regions, [r[2] for _, r in ok], cfg, failed)


def _collect(out, results, errors):
    key, face, regions, meta = out
    if face is None:
        errors[key] = meta  # the error message
    else:
        results[key] = (face, regions, meta)

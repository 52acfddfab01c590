"""On-disk cache of prepared samples, keyed by the dataset, the sample and every PrepConfig field.

Entries are ``<cache_dir>/<key[:2]>/<key>.npz`` holding ``face`` (3, S, S), ``regions`` (3, S, S),
``meta`` (JSON) and ``key``: the entry's own key, checked on every read, so that an entry copied or moved
over another key's file is refused (with a one-line notice) and recomputed instead of serving another
sample's data. Writes go to a temporary file in the same folder, are fsynced and then moved into place
with ``os.replace`` (atomic), so an interrupted run leaves either the whole entry or none; a later run
recomputes what is missing (temporary files of a writer killed outright are deleted after an hour by
the next run). An unreadable entry (e.g. written by hand or truncated by a full disk) is
reported, deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from mer.io import atomic_write, remove_unfinished_write  # noqa: F401  (re-exported for the workers)
from mer.preprocess.config import PIPELINE_VERSION


def _stat(path: str) -> list:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None, None]


def sample_key(sample, cfg_dict: dict) -> str:
    """sha256 over the pipeline version, the sample's identity, annotation and onset/apex files (relative
    path, size, mtime) and every preprocessing parameter (``cfg_dict``, with 'auto' choices resolved)."""
    onset_path = sample.frames[0] if sample.frames else ""
    try:
        apex_path = sample.frame_path(sample.apex)
    except ValueError:
        apex_path = ""

    def rel(p):
        return os.path.relpath(p, sample.root) if sample.root and p else p

    ident = {
        "version": PIPELINE_VERSION,
        "sample": [
            sample.dataset,
            sample.subject,
            sample.clip,
            sample.onset,
            sample.apex,
            sample.offset,
            sample.apex_is_estimated,
            sample.cropped,
            len(sample.frames),
        ],
        "files": [[rel(onset_path), *_stat(onset_path)], [rel(apex_path), *_stat(apex_path)]],
        "cfg": cfg_dict,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


class Cache:
    def __init__(self, root):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def load(self, key: str):
        """(face, regions, meta) or None when absent or unreadable (then it is removed)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                face, regions = z["face"].astype(np.float32), z["regions"].astype(np.float32)
                meta = json.loads(str(z["meta"]))
                own = str(z["key"]) if "key" in z.files else meta.get("cache_key")
        except Exception as e:  # corrupt entry: never serve it
            warnings.warn(
                f"cache entry {p} is unreadable ({type(e).__name__}: {e}); recomputing it", RuntimeWarning, stacklevel=2
            )
            self._drop(p)
            return None
        if own != key:
            warnings.warn(
                f"cache entry {p} belongs to another key ({str(own)[:12]}..., copied or moved "
                f"here?); not used: recomputing {key[:12]}...",
                RuntimeWarning,
                stacklevel=2,
            )
            self._drop(p)
            return None
        return face, regions, meta

    @staticmethod
    def _drop(p: Path) -> None:
        try:
            p.unlink()
        except OSError:
            pass

    def remove_stale_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temporary files left by a killed writer (older than ``max_age_s``); returns how many."""
        from mer.io import remove_temp_files

        return remove_temp_files(self.root, older_than_s=max_age_s)

    def save(self, key: str, face: np.ndarray, regions: np.ndarray, meta: dict) -> Path:
        """Write the entry atomically (complete or absent); it carries its own key, checked on load."""
        p = self.path(key)
        atomic_write(
            p,
            lambda f: np.savez(
                f,
                face=face.astype(np.float32),
                regions=regions.astype(np.float32),
                meta=np.array(json.dumps(meta, default=str)),
                key=np.array(key),
            ),
        )
        return p

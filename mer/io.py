"""Files that are either complete or absent (atomic writes), and the per-sample predictions CSV.

atomic_write_json(path, obj)           # temp file next to path, fsync, rename: never a torn file
atomic_write(path, lambda f: np.savez(f, x=x))
write_predictions(path, index, ids, labels, probs)
rows = read_predictions(path)          # [PredictionRow(index, dataset, subject, clip, label, pred, probs)]
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from mer.labels import LABEL_NAMES

#: the temporary file of the atomic write in progress in this process (None when none is)
_WRITING: str | None = None


def atomic_write(path, write) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync, then rename it onto ``path``.
    On any error the temporary file is removed and ``path`` is left as it was."""
    global _WRITING
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: whoever ends this process can find what it left (remove_writes_of)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    _WRITING = tmp
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        _WRITING = None


def remove_unfinished_write() -> None:
    """Delete the temporary file of an atomic write in progress in this process. For a signal handler that
    ends the process: no temporary file is left behind (the target itself is never half-written anyway)."""
    tmp = _WRITING
    if tmp:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def remove_writes_of(pid: int, folder) -> int:
    """Delete the temporary files that process ``pid`` left one level under ``folder`` (for the process that
    killed it: a writer killed inside C code never runs its own clean-up); returns how many."""
    return remove_temp_files(folder, pid=pid)


def remove_temp_files(folder, *, pid: int | None = None, older_than_s: float | None = None) -> int:
    """Delete the atomic writes' temporary files one level under ``folder``: those of process ``pid`` (any
    writer when None), last modified more than ``older_than_s`` seconds ago (any age when None); returns
    how many. A missing folder has none."""
    import time

    n, now = 0, time.time()
    for p in Path(folder).glob(f"*/.*.{pid}.*.tmp" if pid is not None else "*/.*.tmp"):
        try:
            if older_than_s is None or now - p.stat().st_mtime > older_than_s:
                p.unlink()
                n += 1
        except OSError:
            pass
    return n


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    """JSON with indent 2; numpy scalars and arrays are written as numbers and lists."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(path, obj) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --- predictions.csv -------------------------------------------------------------------------------------
PREDICTION_COLUMNS = ("index", "dataset", "subject", "clip", "label", "pred", *(f"p_{n}" for n in LABEL_NAMES))


class PredictionRow(NamedTuple):
    """One held-out sample: its index in the run's samples.csv, ids, true label, predicted label, and the
    class probabilities (ordered as LABEL_NAMES)."""

    index: int
    dataset: str
    subject: str
    clip: str
    label: int
    pred: int
    probs: tuple


def prediction_rows(index, ids, labels, probs) -> list[PredictionRow]:
    """Rows from parallel sequences: index (N,), ids [(dataset, subject, clip)] * N, labels (N,), probs (N, K);
    pred = argmax of probs."""
    rows = []
    for i, (ds, subj, clip), t, p in zip(index, ids, labels, probs, strict=True):
        p = tuple(float(v) for v in p)
        rows.append(PredictionRow(int(i), ds, subj, clip, int(t), max(range(len(p)), key=p.__getitem__), p))
    return rows


def write_predictions(path, rows: list[PredictionRow]) -> None:
    """predictions.csv: PREDICTION_COLUMNS, one row per sample, probabilities to 6 decimals."""
    lines = [",".join(PREDICTION_COLUMNS)]
    for r in rows:
        lines.append(
            f"{r.index},{r.dataset},{r.subject},{r.clip},{r.label},{r.pred}," + ",".join(f"{v:.6f}" for v in r.probs)
        )
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_predictions(path) -> list[PredictionRow]:
    with open(path, newline="") as f:
        return [
            PredictionRow(
                int(d["index"]),
                d["dataset"],
                d["subject"],
                d["clip"],
                int(d["label"]),
                int(d["pred"]),
                tuple(float(d[f"p_{n}"]) for n in LABEL_NAMES),
            )
            for d in csv.DictReader(f)
        ]

"""Is a finished fold's output whole? Checked before its predictions are merged or the fold is skipped.

    problem = fold_problem(fold_dir, test=[3, 7, 11], labels={3: 0, 7: 2, 11: 1})   # None: usable
    rows = read_fold_predictions(fold_dir / "predictions.csv", test, labels)       # FoldOutputError if not

A fold is finished when ``result.json`` exists (written last). Its outputs can still be damaged afterwards
(a disk that filled up, a copy cut short, a file edited or deleted by hand): then ``mer train`` trains that
fold again (the others are kept) and ``mer evaluate`` stops with the fold and the fix named, instead of a
traceback or, worse, pooled metrics over a wrong set of predictions. Checked per fold: result.json and
history.json parse; model.pt is a complete torch archive (its zip directory reads; the weights themselves
are not loaded; `mer train` only, `mer evaluate` does not read it); predictions.csv has the header, whole
lines (it ends with a newline), one row per test sample of the fold (none missing, none twice, none
foreign), finite probabilities in [0, 1] summing to 1, the prediction their argmax, and each sample's
label as in samples.csv.
"""

from __future__ import annotations

import csv
import json
import math
import zipfile
from pathlib import Path

from mer.io import PREDICTION_COLUMNS, PredictionRow
from mer.labels import NUM_CLASSES


class FoldOutputError(ValueError):
    """A finished fold's output files are missing or damaged (the message names the file and the problem)."""


def _ints(items, n: int = 10) -> str:
    items = sorted(items)
    return ", ".join(map(str, items[:n])) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def read_fold_predictions(path, test, labels: dict | None = None) -> list[PredictionRow]:
    """The rows of a fold's predictions.csv, checked against the fold's test indices ``test`` and (when
    given) the run's labels {index: label}; FoldOutputError naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FoldOutputError(f"{path} is missing")
    raw = path.read_bytes()
    if not raw:
        raise FoldOutputError(f"{path} is empty (0 bytes)")
    if not raw.endswith(b"\n"):
        raise FoldOutputError(f"{path} is truncated (its last line is cut short)")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise FoldOutputError(f"{path} is not text (damaged)") from None
    lines = list(csv.reader(text.splitlines()))
    if not lines or tuple(lines[0]) != PREDICTION_COLUMNS:
        raise FoldOutputError(f"{path} does not start with the header {','.join(PREDICTION_COLUMNS)} (damaged)")
    rows = []
    for n, f in enumerate(lines[1:], start=2):
        try:
            if len(f) != len(PREDICTION_COLUMNS):
                raise ValueError(f"{len(f)} fields, expected {len(PREDICTION_COLUMNS)}")
            probs = tuple(float(v) for v in f[6:])
            r = PredictionRow(int(f[0]), f[1], f[2], f[3], int(f[4]), int(f[5]), probs)
        except ValueError as e:
            raise FoldOutputError(f"{path} line {n} is malformed ({e}): damaged") from None
        if not all(math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6 for p in probs) or abs(sum(probs) - 1) > 1e-4:
            raise FoldOutputError(f"{path} line {n}: the probabilities {f[6:]} are not a distribution (damaged)")
        if not 0 <= r.pred < NUM_CLASSES or probs[r.pred] < max(probs) - 1e-6:
            raise FoldOutputError(f"{path} line {n}: pred {r.pred} is not the most probable class (damaged)")
        rows.append(r)
    got = [r.index for r in rows]
    want = {int(i) for i in test}
    dup = {i for i in got if got.count(i) > 1}
    if dup:
        raise FoldOutputError(
            f"{path} lists sample(s) {_ints(dup)} more than once ({len(rows)} rows for the "
            f"fold's {len(want)} test samples)"
        )
    foreign = set(got) - want
    if foreign:
        raise FoldOutputError(f"{path} holds sample(s) {_ints(foreign)} that are not this fold's test samples")
    missing = want - set(got)
    if missing:
        raise FoldOutputError(
            f"{path} holds {len(rows)} of the fold's {len(want)} test samples (missing: {_ints(missing)}): truncated"
        )
    if labels:
        wrong = [r.index for r in rows if r.index in labels and labels[r.index] != r.label]
        if wrong:
            raise FoldOutputError(f"{path}: the label of sample(s) {_ints(wrong)} differs from samples.csv")
    return rows


def run_labels(root) -> dict | None:
    """{index: label} from RUNDIR/samples.csv (None when it is missing or unreadable)."""
    try:
        with open(Path(root) / "samples.csv", newline="") as f:
            return {int(d["index"]): int(d["label"]) for d in csv.DictReader(f)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fold_problem(fold_dir, test, labels: dict | None = None, *, model: bool = True) -> str | None:
    """What is wrong with a finished fold's outputs (None: all there and whole). Not for unfinished folds.
    ``model=False``: model.pt is not looked at (`mer evaluate` does not read it)."""
    d = Path(fold_dir)
    for name in ("result.json", "history.json"):
        try:
            json.loads((d / name).read_text())
        except FileNotFoundError:
            return f"{d / name} is missing"
        except (OSError, ValueError) as e:
            return f"{d / name} is damaged ({type(e).__name__}: {e})"
    ck = d / "model.pt"
    if model and not ck.is_file():
        return f"{ck} is missing"
    if model:
        try:
            with zipfile.ZipFile(ck) as z:
                if not z.namelist():
                    raise zipfile.BadZipFile("no entries")
        except (zipfile.BadZipFile, OSError) as e:
            return f"{ck} is truncated or damaged ({e})"
    try:
        read_fold_predictions(d / "predictions.csv", test, labels)
    except FoldOutputError as e:
        return str(e)
    return None

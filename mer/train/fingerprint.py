"""What a run was trained on, per sample, so that a resumed run never merges folds trained on other inputs.

    record = fingerprint(samples, x, y)      # {"format", "samples": [{uid, label, input, files}, ...]}
    check_inputs(run_dir, samples, x, y)     # writes RUNDIR/inputs.json, or compares with it on resume

Per sample: its label, a content hash of its model input (sha256 of the float32 array the folds read:
the prepared face or region tile, or the HTNet release's image) and the files it was prepared from (the
onset and apex frames: name, size, modification time). The content hash decides: it changes exactly when
what a fold trains or predicts on changes, whatever the cause (an edited or truncated frame, a
recomputed cache entry, another preprocessing). The file records say which file changed.

A resumed run whose inputs changed, after a fold was trained (finished, or a ``last.pt`` of an
interrupted one), raises :class:`InputsChanged` naming the samples (and files) that changed and the folds
trained on the old ones. The ways on: restore the files (the run then resumes), or ``--force`` (delete the
run, train every fold on the current inputs). Redoing only the affected folds is what ``--force`` amounts
to here: every fold of loso / kfold / cross / holdout uses every sample, in training or as its test
subject, so a changed sample affects every fold trained before the change. When no fold had been trained
yet, the new inputs are simply recorded (and the run's sample/fold lists rewritten).

Not seen: an edit that keeps a frame's size and modification time *and* whose preparation is served from
the preprocessing cache (the cache is keyed by size and mtime too): ``touch`` the file, or clear the cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from mer.train.config import ConfigMismatch

FORMAT = "mer.train.inputs/1"
INPUTS_JSON = "inputs.json"


class InputsChanged(ConfigMismatch):
    """The inputs of a resumed run differ from those its finished/interrupted folds were trained on."""


def input_hash(a: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of one sample's input: dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def _files(sample) -> list:
    """[[name, size, mtime_ns], ...] of the onset and apex frames of a mer.data.Sample ([] otherwise)."""
    if not hasattr(sample, "frame_path") or getattr(sample, "onset", None) is None:
        return []
    out = []
    for n in dict.fromkeys((sample.onset, sample.apex)):
        try:
            p = Path(sample.frame_path(n))
        except Exception:  # noqa: BLE001 - a sample without that frame: nothing to record
            continue
        root = Path(getattr(sample, "root", "") or "/")
        try:
            name = str(p.relative_to(root))
        except ValueError:
            name = str(p)
        try:
            st = p.stat()
            out.append([name, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([name, None, None])
    return out


def fingerprint(samples, x: np.ndarray, y: np.ndarray) -> dict:
    """The record of a run's inputs: samples (objects with .uid), x (M, C, S, S) the model inputs, y (M,)."""
    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "samples": [
            {"uid": s.uid, "label": int(t), "input": input_hash(xi), "files": _files(s)}
            for s, xi, t in zip(samples, x, y, strict=True)
        ],
    }


def write_record(path, record: dict) -> None:
    """inputs.json: the header, then one sample per line (readable, and diffable with the eye)."""
    from mer.io import atomic_write_text

    head = {k: v for k, v in record.items() if k != "samples"}
    lines = [json.dumps(r, separators=(",", ":")) for r in record["samples"]]
    atomic_write_text(path, json.dumps(head)[:-1] + ', "samples": [\n' + ",\n".join(lines) + "\n]}\n")


def _when(ns) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if isinstance(ns, int) else "?"


def _file_changes(old: list, new: list) -> list[str]:
    olds = {f[0]: f for f in old}
    out = []
    for f in new:
        o = olds.get(f[0])
        if o is None or list(o) == list(f):
            continue
        if o[1] != f[1]:
            out.append(f"{f[0]} size {o[1]} -> {f[1]} bytes")
        else:
            out.append(f"{f[0]} modified {_when(o[2])} -> {_when(f[2])}")
    return out


def compare(old: dict, new: dict) -> tuple[list[str], list[str], list[str], list[str]]:
    """(changed, removed, added, files_only): changed = 'uid: what' for samples whose label or input hash
    differ; removed/added: uids; files_only: 'uid: file ...' where only the files' size/mtime differ."""
    o = {r["uid"]: r for r in old.get("samples", [])}
    n = {r["uid"]: r for r in new["samples"]}
    changed, files_only = [], []
    for uid, r in n.items():
        p = o.get(uid)
        if p is None:
            continue
        files = _file_changes(p.get("files", []), r["files"])
        what = []
        if p.get("label") != r["label"]:
            what.append(f"label {p.get('label')} -> {r['label']}")
        if p.get("input") != r["input"]:
            what.append(
                "its prepared input differs"
                + (
                    f" ({'; '.join(files)})"
                    if files
                    else " (its frames' sizes and dates are unchanged: the preprocessing gave other numbers)"
                )
            )
        if what:
            changed.append(f"{uid}: {', '.join(what)}")
        elif files:
            files_only.append(f"{uid}: {'; '.join(files)}")
    removed = [u for u in o if u not in n]
    added = [u for u in n if u not in o]
    return changed, removed, added, files_only


def _trained_folds(root: Path) -> list[str]:
    """The fold folders of the run that hold anything (trained, at least in part)."""
    from mer.train.rundir import RunDir

    return RunDir(root).trained_folds()


def _brief(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_inputs(root, samples, x: np.ndarray, y: np.ndarray, *, notify=None) -> str:
    """Record the run's inputs (RUNDIR/inputs.json) or check a resumed run's against the record.

    Returns 'recorded' (first run, or nothing trained yet), 'same', 'files-touched' (frames with new
    dates/sizes but identical inputs: the record is refreshed) or 'unchecked' (a run made before inputs
    were recorded: recorded now, with a notice). Raises InputsChanged when folds were trained on other
    inputs. ``notify(message)`` shows the notices (default: ``notice: ...`` on stderr); they also go to
    RUNDIR/events.log.
    """
    import sys

    from mer.train.rundir import log_event

    root = Path(root)
    path = root / INPUTS_JSON
    new = fingerprint(samples, x, y)
    trained = _trained_folds(root)

    def note(msg: str) -> None:
        (notify or (lambda m: print(f"notice: {m}", file=sys.stderr)))(msg)
        log_event(root, msg)

    if not path.exists():
        if trained:
            note(
                f"{root}: this run has {len(trained)} trained fold(s) but no record of their inputs (made before "
                f"mer recorded them): they cannot be checked against the current inputs; recording these now"
            )
            write_record(path, new)
            return "unchecked"
        write_record(path, new)
        return "recorded"
    try:
        old = json.loads(path.read_text())
        if old.get("format") != FORMAT:
            raise ValueError(f"format {old.get('format')!r}")
    except (OSError, ValueError) as e:
        if trained:
            raise InputsChanged(
                f"{path} is unreadable ({e}), so the inputs of this run's {len(trained)} trained "
                "fold(s) cannot be checked; rerun with --force to train every fold on the "
                "current inputs"
            ) from None
        write_record(path, new)
        return "recorded"
    changed, removed, added, files_only = compare(old, new)
    if not (changed or removed or added):
        if files_only:
            note(
                f"{root}: the frames of {len(files_only)} sample(s) have new sizes or dates but give the same "
                f"prepared inputs ({_brief(files_only, 3)}): resuming"
            )
            write_record(path, new)
            return "files-touched"
        return "same"
    if not trained:
        note(
            f"{root}: the inputs changed since this run directory was made, before any fold was trained: "
            "starting with the current inputs"
        )
        for name in ("samples.csv", "folds.json", "excluded.json"):  # they describe no trained fold
            (root / name).unlink(missing_ok=True)
        write_record(path, new)
        return "recorded"
    what = []
    if changed:
        what.append(f"{len(changed)} sample(s) changed")
    if removed:
        what.append(f"{len(removed)} no longer in the run (excluded or gone: {_brief(removed, 4)})")
    if added:
        what.append(f"{len(added)} new ({_brief(added, 4)})")
    folds = _brief(trained, 6)
    head = (
        f"{root}: the run's inputs changed since its folds were trained: {'; '.join(what)}. "
        f"{len(trained)} fold(s) were trained on the old inputs ({folds}); merging them with folds trained "
        "on the current ones would mix two data sets, so the run stops"
    )
    fix = (
        "Restore the original files to resume this run, or rerun with --force to delete it and train "
        "every fold on the current inputs (each fold uses every sample, in training or as its test "
        "subject, so none of the trained folds can be kept)"
    )
    log_event(root, head)
    if len(changed) == 1 and not removed and not added:
        raise InputsChanged(f"{head}. Changed: {changed[0]}. {fix}")
    lines = [f"  - {c}" for c in changed[:30]] + ([f"  ... and {len(changed) - 30} more"] if len(changed) > 30 else [])
    raise InputsChanged("\n".join([head + (":" if lines else "."), *lines, fix]))

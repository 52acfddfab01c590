"""Damaged files of a run: epoch checkpoints that do not load, finished folds whose outputs are damaged.

    ck = resume(fold_dir / "last.pt", apply, model, opt)   # apply(ck) restores it; None: start from scratch
    save_checkpoint(fold_dir / "last.pt", payload)        # the previous one is kept as last.prev.pt
    if not fold_finished(run_dir, dirname, test): ...     # damaged outputs -> the fold is trained again

Checkpoints are written atomically, so a run that is killed never leaves a torn ``last.pt``; a file can
still be damaged afterwards (a full disk on a copy, a storage fault, a file edited by hand). Every epoch
checkpoint moves the previous one to ``last.prev.pt`` first, so there is one older checkpoint to fall
back on. ``resume`` tries ``last.pt``, then ``last.prev.pt``: a file that does not load (or does not fit
the model) is renamed ``<name>.damaged`` and named in a warning, and the fold resumes from the other one
or, when neither loads, restarts from scratch. The warning says which; the run's events.log records it.
Either way the fold's result is the one an uninterrupted run gives: a checkpoint holds the whole state
(model, optimiser, RNG, history), and a fresh start is seeded like the first one.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

PREVIOUS = "last.prev.pt"


class RecoveryWarning(UserWarning):
    """Something of a run was damaged and is being redone (the message says what and how)."""


def show_warnings_plainly() -> None:
    """Warnings as ``warning: <message>`` lines on stderr (what the `mer` commands print), e.g. in fold
    worker processes, whose warnings would otherwise carry a file name and a source line."""
    import sys

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


def _run_root(path: Path) -> Path | None:
    """RUNDIR of RUNDIR/folds/<fold>/<file> (None for a path elsewhere)."""
    path = Path(path)
    return path.parent.parent.parent if path.parent.parent.name == "folds" else None


def notify(message: str, path=None, root=None) -> None:
    """A RecoveryWarning, and a line in the run's events.log (root, or found from a fold file's ``path``)."""
    from mer.train.rundir import log_event

    warnings.warn(message, RecoveryWarning, stacklevel=3)
    root = root if root is not None else (_run_root(path) if path is not None else None)
    if root is not None:
        log_event(root, message)


def _first_line(e: BaseException) -> str:
    """'Type: the first sentence of the message' (torch's load errors run to several lines of advice)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    text = text.split(". ")[0][:160]
    return f"{type(e).__name__}: {text}".rstrip(": ")


def save_checkpoint(path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (mer.io.atomic_torch_save), keeping the previous file as
    ``last.prev.pt`` next to it."""
    from mer.io import atomic_torch_save

    path = Path(path)
    if path.exists():
        os.replace(path, path.with_name(PREVIOUS))
    atomic_torch_save(path, payload)


def discard_checkpoints(path) -> None:
    """Remove ``last.pt`` and ``last.prev.pt`` (the fold is finished)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_name(PREVIOUS).unlink(missing_ok=True)


def resume(path, apply, model, opt):
    """Load the fold's epoch checkpoint ``path`` (or, when it is damaged, ``last.prev.pt``) and restore it
    with ``apply(ck)``; returns apply's result, or None when there is nothing (usable) to resume from.

    A damaged file is renamed ``<name>.damaged`` and reported (RecoveryWarning + events.log) with what
    happens instead. ``model``/``opt`` (and the torch RNG) are put back as they were when a file fails
    half-way through ``apply`` (e.g. weights of another shape), so a fresh start is exactly a fresh start.
    """
    import torch

    path = Path(path)
    bad = []
    for p in (path, path.with_name(PREVIOUS)):
        if not p.exists():
            continue
        snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state())
        try:
            ck = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(ck, dict) or not {"state_dict", "optimizer", "rng", "epoch"} <= set(ck):
                raise ValueError("not an epoch checkpoint of `mer train` (keys missing)")
            out = apply(ck)
        except Exception as e:  # noqa: BLE001 - any failure to load means: do not use this file
            model.load_state_dict(snapshot[0])
            opt.load_state_dict(snapshot[1])
            torch.set_rng_state(snapshot[2])
            damaged = p.with_name(p.name + ".damaged")
            try:
                os.replace(p, damaged)
            except OSError:
                damaged = p
            bad.append(f"{p} ({_first_line(e)}; kept as {damaged.name})")
            continue
        if bad:
            notify(
                f"checkpoint {' and '.join(bad)} does not load: the fold resumes from the previous "
                f"checkpoint {p.name} (epoch {int(ck['epoch'])})",
                path=path,
            )
        return out
    if bad:
        notify(
            f"checkpoint {' and '.join(bad)} does not load and there is no older good one: the fold "
            "restarts from scratch (epoch 0)",
            path=path,
        )
    return None


def fold_finished(root, dirname: str, test, labels: dict | None = None, *, model: bool = True) -> bool:
    """Whether fold ``dirname`` of run ``root`` is finished with whole outputs. A finished fold whose
    outputs are damaged (mer.evaluation.integrity) is reported and marked unfinished (its result.json is
    renamed result.json.damaged), so that the run trains it again; the other folds are kept.
    ``model=False``: the run writes no model.pt (``--no-save-models``), so none is required."""
    from mer.evaluation.integrity import fold_problem

    d = Path(root) / "folds" / dirname
    if not (d / "result.json").exists():
        return False
    problem = fold_problem(d, test, labels, model=model)
    if problem is None:
        return True
    os.replace(d / "result.json", d / "result.json.damaged")
    notify(f"fold {dirname} was finished but {problem}: training this fold again (the other folds are kept)", root=root)
    return False

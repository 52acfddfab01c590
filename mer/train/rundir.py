"""The run directory: layout, config check, finished-fold bookkeeping.

RUNDIR/
  config.json            the resolved TrainConfig (written first; a rerun must match it)
  samples.csv            index, dataset, subject, clip, label of every sample of the run
  folds.json             per fold: name, dir, train/test indices, test subjects
  excluded.json          samples the preparation could not use (on_prep_error='warn'), with the reason
  folds/<NNN-name>/
    last.pt              resumable checkpoint (model, optimiser, RNG, history); removed when the fold ends
    model.pt             the evaluated model: state_dict + config (torch.load(..., weights_only=True))
    history.json         per-epoch train loss/accuracy (+ validation or oracle scores)
    predictions.csv      dataset, subject, clip, label, pred, p0, p1, p2 of the held-out samples
    predictions_last_epoch.csv   selection oracle-release only: the same at the last epoch
    result.json          written last: the fold is finished (indices used, epoch selected, timings)
  predictions.csv, metrics.json, megc_log.txt, summary.md, confusion_*.png, learning_curves.png
  inputs.json            a fingerprint of every sample's input (mer.train.fingerprint): resume checks it
  train.lock             held while a `mer train` runs here (mer.train.lock)
  events.log             what went wrong and what was done about it (one timestamped line each)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from mer.io import atomic_write_text
from mer.train.config import ConfigMismatch, TrainConfig
from mer.train.lock import LOCK_NAME

EVENTS_LOG = "events.log"


def log_event(root, message: str) -> None:
    """Append ``message`` with a UTC timestamp (and this process's pid) to ``root``/events.log. One
    ``write`` of a short line in append mode: lines of concurrent fold workers do not interleave."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}: {' '.join(message.split())}\n"
    try:
        with open(Path(root) / EVENTS_LOG, "a") as f:
            f.write(line)
    except OSError:
        pass  # the log is a record, never a reason to fail a run


class RunDir:
    """Paths and bookkeeping of one run directory."""

    def __init__(self, root):
        self.root = Path(root)

    # paths
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def folds_root(self) -> Path:
        return self.root / "folds"

    def fold_dir(self, dirname: str) -> Path:
        return self.folds_root / dirname

    def is_done(self, dirname: str) -> bool:
        return (self.fold_dir(dirname) / "result.json").exists()

    def trained_folds(self) -> list[str]:
        """Fold folders that hold anything (a checkpoint, outputs): folds trained, at least in part."""
        if not self.folds_root.is_dir():
            return []
        return sorted(d.name for d in self.folds_root.iterdir() if d.is_dir() and any(d.iterdir()))

    # config
    def read_config(self) -> TrainConfig | None:
        if not self.config_path.exists():
            return None
        return TrainConfig.from_dict(json.loads(self.config_path.read_text()))

    def init(self, cfg: TrainConfig, *, force: bool = False) -> str:
        """Create the run directory for ``cfg`` or check that it holds the same experiment.

        Returns 'new', 'resume' or 'forced'. A different experiment raises ConfigMismatch unless force, or
        unless no fold has been trained yet (then it simply starts, with a notice); force deletes the
        previous run's files first (whatever its config: it means "start afresh").
        """
        old = None
        if self.config_path.exists():
            try:
                old = self.read_config()
            except (ValueError, TypeError, json.JSONDecodeError) as e:
                if not force:
                    raise ConfigMismatch(
                        f"{self.config_path} cannot be read as a TrainConfig ({e}); choose "
                        "another --out or pass --force to replace the run"
                    ) from None
                old = "unreadable"
        elif (
            self.root.exists() and any(p.name not in (LOCK_NAME, EVENTS_LOG) for p in self.root.iterdir()) and not force
        ):
            raise ConfigMismatch(
                f"{self.root} exists, is not empty and holds no config.json: not a run "
                "directory. Choose another --out or pass --force to replace it"
            )
        state = "new"
        if old is not None and not force and not self.trained_folds():
            # nothing was trained under the saved config (e.g. its data failed to load, and the error said to
            # pass --on-error warn): nothing can be mixed, so the run starts with the requested config
            diff = cfg.diff(old) if isinstance(old, TrainConfig) else ["unreadable config"]
            if diff:
                import sys

                print(
                    f"notice: {self.root} holds no trained fold of its saved config; starting with the requested "
                    f"one ({'; '.join(diff)})",
                    file=sys.stderr,
                )
                self.clear()
                old = None
        if old is not None:
            diff = cfg.diff(old) if isinstance(old, TrainConfig) else ["unreadable config"]
            if diff and not force:
                lines = old.diff(cfg) if isinstance(old, TrainConfig) else diff
                raise ConfigMismatch(
                    f"{self.root} holds a run with a different config (saved -> requested):\n  "
                    + "\n  ".join(lines)
                    + "\nRerun with the saved options to resume it, choose another --out, or pass --force "
                    "to delete it and start afresh."
                )
            if force:  # another config, or the same one started afresh (e.g. after its inputs changed)
                self.clear()
                state = "forced"
            else:
                state = "resume"
        elif force and self.root.exists():
            self.clear()
            state = "forced"
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, cfg.to_json() + "\n")
        return state

    def clear(self) -> None:
        """Delete the run's files (the folder itself and the lock of the run doing this are kept)."""
        if not self.root.exists():
            return
        for p in self.root.iterdir():
            if p.name == LOCK_NAME:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

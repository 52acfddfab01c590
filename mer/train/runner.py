"""A whole run: data -> preparation (cached) -> folds -> train each fold (serial, worker processes, or
sharded over torchrun ranks) -> merged predictions, pooled UF1/UAR, MEGC log, tables and plots.

    from mer.train import TrainConfig, run_training
    metrics = run_training(TrainConfig(data="synth", protocol="kfold:5", out="runs/demo"))

Rerunning the same config into the same directory skips finished folds and resumes an interrupted one
from its last checkpoint; a different config raises ConfigMismatch unless ``force=True``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from mer.io import atomic_write_text
from mer.train import distributed as dist
from mer.train import pool
from mer.train.config import ConfigMismatch, FoldListError, TrainConfig, parse_fold_list
from mer.train.fingerprint import check_inputs
from mer.train.folds import build_folds, fold_dirname, shard
from mer.train.lock import take_lock
from mer.train.loop import FoldTask, train_fold
from mer.train.recovery import fold_finished
from mer.train.rundir import RunDir


class FoldFailure(RuntimeError):
    """One or more folds (or ranks) failed; the message lists them."""

    @classmethod
    def listing(cls, errors: list[str], advice: str) -> FoldFailure:
        """The failure of the folds described by ``errors`` (one line each), with what to do next."""
        return cls(f"{len(errors)} fold(s) failed (the finished ones are kept; {advice}):\n  " + "\n  ".join(errors))


def _task(cfg: TrainConfig, index: int, fold, rd: RunDir, shared: dict) -> FoldTask:
    name = fold_dirname(index, fold)
    return FoldTask(
        cfg=cfg,
        index=index,
        name=fold.name,
        dirname=name,
        fold_dir=str(rd.fold_dir(name)),
        train=fold.train,
        test=fold.test,
        x=shared["x"],
        y=shared["y"],
        subjects=shared["subjects"],
        ids=shared["ids"],
    )


def _train_unit(
    cfg: TrainConfig, unit: list[tuple[int, object]], rd: RunDir, shared: dict, *, progress: bool, on_epoch_end
) -> list[dict]:
    """Train one unit of work: a fold alone (fold_batch 1), or up to fold_batch folds together."""
    tasks = [_task(cfg, i, fold, rd, shared) for i, fold in unit]
    if cfg.fold_batch > 1:
        from mer.train.batched import train_folds_batched

        return train_folds_batched(tasks, progress=progress, position=1, on_epoch_end=on_epoch_end)
    return [train_fold(tasks[0], progress=progress, position=1, on_epoch_end=on_epoch_end)]


def _worker_run(unit: list, cfg: TrainConfig, root: str, on_epoch_end) -> list[dict]:
    return _train_unit(cfg, unit, RunDir(root), pool.shared(), progress=False, on_epoch_end=on_epoch_end)


def _collective(ctx, fn, *, main_only: bool = False):
    """Run fn() (on rank 0 only if main_only), then share success/failure with every rank: raise on every
    rank when any failed, so no rank waits forever for one that died."""
    err, value = None, None
    if not main_only or ctx.is_main:
        try:
            value = fn()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - reported to every rank, then re-raised here
            if not ctx.active:
                raise
            err = f"rank {ctx.rank}: {type(e).__name__}: {e}"
            exc = e
    errors = [e for e in dist.gather(ctx, err) if e]
    if err is not None:
        raise exc
    if errors:
        raise FoldFailure("another rank failed:\n  " + "\n  ".join(errors))
    return value


def _write_or_check(path: Path, text: str, what: str) -> None:
    if path.exists():
        if path.read_text() != text:
            raise ConfigMismatch(
                f"{path}: the {what} differ from the saved run's (the data or protocol changed "
                "although the config did not). Use another --out or --force."
            )
        return
    atomic_write_text(path, text)


def _samples_csv(samples, y) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "dataset", "subject", "clip", "label"])
    for i, (s, t) in enumerate(zip(samples, y, strict=True)):
        w.writerow([i, s.dataset, s.subject, s.clip, int(t)])
    return buf.getvalue()


def _folds_json(folds) -> str:
    return (
        json.dumps(
            [
                {
                    "index": i,
                    "name": f.name,
                    "dir": fold_dirname(i, f),
                    "train": f.train.tolist(),
                    "test": f.test.tolist(),
                    "test_subjects": ["/".join(s) for s in f.test_subjects],
                }
                for i, f in enumerate(folds)
            ]
        )
        + "\n"
    )


def run_training(cfg: TrainConfig, *, force: bool = False, on_fold_done=None, on_epoch_end=None) -> dict | None:
    """Run (or resume) ``cfg``; returns the merged metrics on rank 0 (None on other ranks).

    on_fold_done(result) is called in this process after each fold that runs here (serial mode and the
    results coming back from worker processes). on_epoch_end(task, state) is called after every epoch of
    every fold, in the process that trains it (with workers > 1 it must be picklable).
    """
    from tqdm.auto import tqdm

    from mer.train.data import check_source, input_size, load_inputs, resolve_paths
    from mer.train.device import check_device
    from mer.train.models import build_model

    cfg = resolve_paths(cfg)
    ctx = dist.setup()
    lock = None
    try:
        rd = RunDir(cfg.out)
        t0 = time.perf_counter()

        def start():  # cheap checks first: nothing is written for a missing folder or an unknown model
            nonlocal lock
            check_device(cfg.device)
            check_source(cfg)
            build_model(cfg.model, cfg.model_kwargs, image_size=input_size(cfg))
            lock = take_lock(rd.root)  # one `mer train` per run directory (rank 0 holds it for all ranks)
            return rd.init(cfg, force=force)

        state = _collective(ctx, start, main_only=True)
        if ctx.is_main and cfg.progress:
            print(f"run directory {rd.root} ({state}); selection: {cfg.selection_label}")
        prep_workers = cfg.prep_workers or max(cfg.workers, 1)
        loaded = _collective(ctx, lambda: load_inputs(cfg, workers=prep_workers, progress=cfg.progress), main_only=True)
        if not ctx.is_main:  # every entry is cached now: a fast read
            loaded = load_inputs(cfg, workers=1, progress=False)
        samples, x, y = loaded.samples, loaded.x, loaded.y
        excluded = [{"uid": smp.uid, "reason": why} for smp, why in loaded.excluded]
        t_prep = time.perf_counter() - t0
        folds = build_folds(samples, cfg.protocol, kfold_seed=cfg.kfold_seed, loso_folds=loaded.loso_folds)
        chosen = parse_fold_list(cfg.folds) if cfg.folds is not None else None
        if chosen is not None and chosen[-1] >= len(folds):  # before this run's sample and fold lists are written
            raise FoldListError(f"--folds {cfg.folds}: this run has {len(folds)} folds, indices 0 to {len(folds) - 1}")
        _collective(
            ctx,
            lambda: (
                check_inputs(rd.root, samples, x, y),  # refuses folds trained on other inputs
                _write_or_check(rd.root / "samples.csv", _samples_csv(samples, y), "samples"),
                _write_or_check(rd.root / "folds.json", _folds_json(folds), "folds"),
                _write_or_check(rd.root / "excluded.json", json.dumps(excluded, indent=1) + "\n", "excluded samples"),
            ),
            main_only=True,
        )
        shared = {
            "x": x,
            "y": y,
            "subjects": [(s.dataset, s.subject) for s in samples],
            "ids": [(s.dataset, s.subject, s.clip) for s in samples],
        }
        mine = shard(len(folds), ctx.rank, ctx.world)
        if chosen is not None:  # --folds: a slice of the run now, the rest later into the same --out
            keep = set(chosen)
            mine = [i for i in mine if i in keep]
        labels = {i: int(t) for i, t in enumerate(y)}  # a finished fold with damaged outputs is trained again
        todo = [
            i
            for i in mine
            if not fold_finished(rd.root, fold_dirname(i, folds[i]), folds[i].test, labels, model=cfg.save_models)
        ]
        if cfg.progress:
            where = f"rank {ctx.rank}/{ctx.world}: " if ctx.active else ""
            print(
                f"{where}{len(samples)} samples, {len(folds)} folds ({cfg.protocol}); {len(mine) - len(todo)} "
                f"of {len(mine)} already finished; prepared in {t_prep:.1f} s"
            )
        _collective(
            ctx, lambda: _run_folds(cfg, folds, todo, len(mine), rd, shared, ctx, on_fold_done, on_epoch_end, tqdm)
        )
        from mer.evaluation.report import write_report

        # every rank waits here until rank 0 has merged the run: no rank leaves (and tears down its process
        # group) while the merge is still being written, and a failed merge is reported on every rank
        partial = cfg.folds is not None  # folds outside --folds may be unfinished: score the finished ones
        metrics = _collective(ctx, lambda: write_report(rd.root, partial=partial, print_table=True), main_only=True)
        return metrics if ctx.is_main else None
    finally:
        if lock is not None:
            lock.release()
        dist.teardown(ctx)


def _run_folds(cfg, folds, todo, n_mine, rd, shared, ctx, on_fold_done, on_epoch_end, tqdm) -> None:
    bar = tqdm(
        total=n_mine,
        initial=n_mine - len(todo),
        desc="folds" + (f" (rank {ctx.rank})" if ctx.active else ""),
        unit="fold",
        disable=not cfg.progress,
        position=0,
    )

    def done(res):
        bar.update()
        if cfg.progress:
            bar.write(
                f"  fold {res['index']:3d} {res['fold']:<20s} test acc {res['test_acc']:.3f} "
                f"(n={res['n_test']}), {res['epochs_run']} epochs, {res['seconds']:.1f} s"
            )
        if on_fold_done is not None:
            on_fold_done(res)

    units = [[(i, folds[i]) for i in todo[k : k + cfg.fold_batch]] for k in range(0, len(todo), cfg.fold_batch)]
    try:
        if cfg.workers <= 1 or len(units) <= 1:
            if ctx.active:
                import torch

                torch.set_num_threads(pool.threads_for(1))
            for unit in units:
                for res in _train_unit(cfg, unit, rd, shared, progress=cfg.progress, on_epoch_end=on_epoch_end):
                    done(res)
        else:
            failures = pool.map_in_workers(
                _worker_run,
                units,
                workers=cfg.workers,
                shared=shared,
                on_result=lambda unit, results: [done(res) for res in results],
                args=(cfg, str(rd.root), on_epoch_end),
            )
            if failures:
                errors = [
                    f"fold {', '.join(f'{i} ({fold.name})' for i, fold in unit)}: {type(e).__name__}: {e}"
                    for unit, e in failures
                ]
                raise FoldFailure.listing(errors, "rerun to retry")
    finally:
        bar.close()

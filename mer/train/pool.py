"""Folds in worker processes, shared by `mer train --workers` and `mer prune --workers`.

A spawn pool (fork and torch's thread pools do not mix) whose workers receive the run's arrays once, at
start-up, split the machine's cores between them (torch threads), and leave Ctrl-C to the main process:
on Ctrl-C or any error of the main loop the workers are killed at once instead of finishing their folds.
One failing item does not stop the others; the failures are returned for the caller to report.

    failures = map_in_workers(prune_one, folds, workers=2, shared={"x": x}, on_result=collect)

``fn`` must be a module-level function (it is pickled by name); it reads the arrays with ``shared()``.
"""

from __future__ import annotations

import os

# set by the worker initialiser: the arrays every item of the job shares (sent once per worker process)
_SHARED: dict = {}


def threads_for(workers: int) -> int:
    """torch threads per worker: the cores split between the workers (and torchrun's local ranks)."""
    cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(1, workers * local))


def shared() -> dict:
    """Inside a worker: the arrays passed as ``map_in_workers(..., shared=...)``."""
    return _SHARED


def _init_worker(threads: int, arrays: dict) -> None:
    import signal

    import torch

    from mer.train.recovery import show_warnings_plainly

    # Ctrl-C is the main process's business: it terminates the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    show_warnings_plainly()  # e.g. a damaged checkpoint, named in one `warning:` line as in the main process
    torch.set_num_threads(threads)
    _SHARED.update(arrays)


def map_in_workers(fn, items, *, workers: int, shared: dict, on_result, args: tuple = ()) -> list:
    """``fn(item, *args)`` for every item in ``min(workers, len(items))`` spawn processes; ``on_result(item,
    value)`` runs in this process as each finishes. Returns ``[(item, exception), ...]`` for the items that
    failed (the others complete regardless)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    items = list(items)
    ex = ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(items))),
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads_for(workers), shared),
    )
    failures = []
    try:
        futs = {ex.submit(fn, item, *args): item for item in items}
        for f in as_completed(futs):
            try:
                on_result(futs[f], f.result())
            except Exception as e:  # noqa: BLE001 - collected, the other items go on
                failures.append((futs[f], e))
    except BaseException:
        # stop now: queued items are cancelled and running ones killed, so Ctrl-C does not wait for them
        for proc in list(getattr(ex, "_processes", {}).values()):
            proc.terminate()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return failures

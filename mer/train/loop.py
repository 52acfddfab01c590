"""One fold: prepare its arrays -> train_epochs -> select the epoch and predict -> write its files.

    result = train_fold(task)                                   # what the runner calls per fold
    data = prepare_fold(task)                                   # normalised fit/val/test arrays
    state = train_epochs(model, opt, data, cfg, order_key=(seed, fold), on_epoch_end=callback)

Every access to the sample arrays goes through :class:`~mer.train.inputs.IndexLog`, which records which
sample indices were used for what ('fit', 'norm', 'val', 'augment', 'select', 'predict'). ``result.json``
stores that record, so tests (and users) can check that no held-out sample reached training,
normalisation, validation, augmentation or model selection. Only selection='oracle-release' (the released
HTNet's evaluation, labelled as not a valid estimate) puts test indices under 'select'.

Resuming: ``last.pt`` (model, optimiser, torch RNG, history, best state) is written every
``checkpoint_every`` epochs; a rerun continues from it. The minibatch order of epoch e is drawn from
``numpy.random.default_rng([seed, fold, e])`` (``epoch_order``), so a resumed fold sees the same batches as
an uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mer.io import atomic_torch_save, atomic_write_json, prediction_rows, write_predictions
from mer.labels import LABEL_NAMES
from mer.train.config import TrainConfig
from mer.train.folds import validation_split
from mer.train.inputs import IndexLog, channel_stats, class_weight_vector, normalise, predict_proba, scores
from mer.train.models import build_model
from mer.train.recovery import discard_checkpoints, resume, save_checkpoint

CHECKPOINT_FORMAT = "mer.train/1"


@dataclass
class FoldTask:
    """One fold to train. x: (M, 3, S, S) float32 of the whole run (not normalised); y: (M,) int64;
    train/test: index arrays into them; subjects/ids: (dataset, subject) / (dataset, subject, clip) per row."""

    cfg: TrainConfig
    index: int
    name: str
    dirname: str
    fold_dir: str
    train: np.ndarray
    test: np.ndarray
    x: np.ndarray
    y: np.ndarray
    subjects: list
    ids: list

    @property
    def seed(self) -> int:
        """The fold's torch seed (model initialisation, dropout): cfg.seed * 1000 + index."""
        return self.cfg.seed * 1000 + self.index


@dataclass
class FoldArrays:
    """A fold's arrays, normalised with the statistics of its fit samples. x_*: (n, 3, S, S) float32,
    y_*: (n,) int64; fit/val/test: indices into the run's samples; x_val/x_sel are None when unused."""

    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_sel: np.ndarray | None  # the held-out subjects, labelled: only for the oracle reproduction
    y_sel: np.ndarray | None
    x_test: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n_real: int
    n_generated: int
    log: IndexLog


@dataclass
class TrainState:
    """Where training stands: epochs done, per-epoch records, the best epoch so far (selection by
    validation or oracle: {"epoch", "score", "state_dict"}), and whether early stopping ended it."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None
    stopped: bool = False


def prepare_fold(task: FoldTask) -> FoldArrays:
    """Split the training subjects (validation), normalise with the fit samples' statistics, add DDPM samples."""
    cfg, log = task.cfg, IndexLog()
    train, test = np.asarray(task.train, np.int64), np.asarray(task.test, np.int64)
    if cfg.selection == "val":
        fit, val = validation_split(train, task.subjects, cfg.val_fraction, task.seed)
    else:
        fit, val = train, np.zeros(0, np.int64)
    if cfg.normalize == "channel":  # statistics of the fit subset of the training subjects only
        mean, std = channel_stats(log.take("norm", task.x, fit))
    else:
        mean, std = np.zeros(task.x.shape[1]), np.ones(task.x.shape[1])
    x_fit = normalise(log.take("fit", task.x, fit), mean, std)
    y_fit = log.take("fit", task.y, fit)
    n_real = len(y_fit)
    if cfg.augment == "ddpm":
        log.take("augment", task.y, fit)  # the DDPM sees exactly the fit arrays
        x_gen, y_gen = _ddpm_samples(cfg, x_fit, y_fit, task)
        x_fit = np.concatenate([x_fit, x_gen.astype(np.float32)])
        y_fit = np.concatenate([y_fit, y_gen.astype(np.int64)])
    has_val, oracle = len(val) > 0, cfg.selection == "oracle-release"
    return FoldArrays(
        fit=fit,
        val=val,
        test=test,
        x_fit=x_fit,
        y_fit=y_fit,
        x_val=normalise(log.take("val", task.x, val), mean, std) if has_val else None,
        y_val=log.take("val", task.y, val) if has_val else None,
        x_sel=normalise(log.take("select", task.x, test), mean, std) if oracle else None,
        y_sel=log.take("select", task.y, test) if oracle else None,
        x_test=normalise(log.take("predict", task.x, test), mean, std),
        mean=mean,
        std=std,
        n_real=n_real,
        n_generated=len(y_fit) - n_real,
        log=log,
    )


def _ddpm_samples(cfg: TrainConfig, x_fit: np.ndarray, y_fit: np.ndarray, task: FoldTask):
    from mer.augment import DDPMConfig, augment_fold

    dcfg = DDPMConfig(**{"progress": False, **cfg.ddpm})
    ratio = cfg.augment_ratio if cfg.augment_ratio == "balance" else float(cfg.augment_ratio)
    cache = Path(cfg.cache_dir).expanduser().parent / "ddpm"
    return augment_fold(x_fit, y_fit, cfg=dcfg, cache_dir=cache, fold_key=task.dirname, seed=task.seed, ratio=ratio)


def epoch_order(y: np.ndarray, cfg: TrainConfig, order_key: tuple, epoch: int) -> np.ndarray:
    """The minibatch order of an epoch over the fit samples (labels y (n,)): a permutation drawn from
    ``default_rng([*order_key, epoch])``, or with cfg.shuffle False the samples grouped by label (stable),
    the same every epoch, as the release's unshuffled DataLoader over its u_train/<label>/ folders."""
    if not cfg.shuffle:
        return np.argsort(y, kind="stable")
    return np.random.default_rng([*order_key, epoch]).permutation(len(y))


def fold_class_weights(data: FoldArrays, cfg: TrainConfig) -> torch.Tensor | None:
    """Cross-entropy class weights from the fold's *real* fit labels (generated samples do not change them,
    so an augmented and a plain run weight the classes alike)."""
    return class_weight_vector(data.y_fit[: data.n_real], cfg.class_weights)


def is_better(score: tuple, best: dict | None, cfg: TrainConfig) -> bool:
    """Selection: validation keeps the first best epoch (strictly better); oracle-release keeps the latest
    (the release's ``if best_accuracy <= accuracy``)."""
    if best is None:
        return True
    return score >= tuple(best["score"]) if cfg.selection == "oracle-release" else score > tuple(best["score"])


def epoch_scores(model, data: FoldArrays) -> tuple[dict, tuple | None]:
    """(record fields, selection score) after an epoch: validation scores, or the oracle's test scores."""
    rec, score = {}, None
    if data.x_val is not None:
        v = scores(data.y_val, predict_proba(model, data.x_val))
        rec.update({f"val_{k}": x for k, x in v.items()})
        score = (v["uf1"], -v["loss"])
    if data.x_sel is not None:
        o = scores(data.y_sel, predict_proba(model, data.x_sel))
        rec.update({f"oracle_test_{k}": x for k, x in o.items()})
        score = (o["acc"],)
    return rec, score


def end_epoch(state: TrainState, rec: dict, score: tuple | None, cfg: TrainConfig) -> bool:
    """Append the epoch's record; make it the best epoch when its score is better (the caller keeps its
    weights in state.best["state_dict"]); decide early stopping. Returns whether the epoch is the new best."""
    state.history.append(rec)
    improved = score is not None and is_better(score, state.best, cfg)
    if improved:
        state.best = {"epoch": state.epoch, "score": list(score), "state_dict": None}
    if cfg.selection == "val" and state.epoch - state.best["epoch"] >= cfg.patience:
        state.stopped = True
    return improved


def train_epochs(
    model,
    opt,
    data: FoldArrays,
    cfg: TrainConfig,
    *,
    order_key: tuple,
    state: TrainState | None = None,
    on_epoch_end=None,
    bar=None,
) -> TrainState:
    """Train from ``state`` (default: epoch 0) up to cfg.epochs, or until early stopping (selection 'val').

    Each epoch (minibatches in ``epoch_order``) appends a record (train loss/accuracy, validation or oracle
    scores, seconds) to state.history and keeps the best epoch's weights in state.best; then
    ``on_epoch_end(state)`` is called (checkpointing, progress, interrupting tests).
    """
    state = state or TrainState()
    device = next(model.parameters()).device
    xt, yt = torch.from_numpy(data.x_fit).to(device), torch.from_numpy(data.y_fit).to(device)
    n, bs = len(yt), cfg.batch_size
    weight = fold_class_weights(data, cfg)
    weight = weight.to(device) if weight is not None else None
    while state.epoch < cfg.epochs and not state.stopped:
        te = time.perf_counter()
        model.train()
        order = torch.from_numpy(epoch_order(data.y_fit, cfg, order_key, state.epoch)).to(device)
        tot_loss, correct = 0.0, 0
        for s in range(0, n, bs):
            b = order[s : s + bs]
            logits = model(xt[b])
            loss = F.cross_entropy(logits, yt[b], weight=weight, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += loss.item() * len(b)
            correct += int((logits.argmax(1) == yt[b]).sum())
        state.epoch += 1
        rec = {"epoch": state.epoch, "train_loss": tot_loss / n, "train_acc": correct / n}
        sel, score = epoch_scores(model, data)
        rec.update(sel, seconds=round(time.perf_counter() - te, 3))
        if end_epoch(state, rec, score, cfg):
            state.best["state_dict"] = copy.deepcopy(model.state_dict())
        if bar is not None:
            bar.set_postfix(
                loss=f"{rec['train_loss']:.3f}", **({"val_uf1": f"{rec['val_uf1']:.3f}"} if "val_uf1" in rec else {})
            )
            bar.update()
        if on_epoch_end is not None:
            on_epoch_end(state)
    return state


def checkpoint_due(state: TrainState, cfg: TrainConfig) -> bool:
    """After this epoch, write last.pt? Every checkpoint_every epochs, and when training ends (0: never)."""
    if cfg.checkpoint_every == 0:
        return False
    return state.epoch % cfg.checkpoint_every == 0 or state.stopped or state.epoch == cfg.epochs


@contextmanager
def numerics(cfg: TrainConfig):
    """cfg.deterministic (torch.use_deterministic_algorithms) and cfg.matmul_precision
    (torch.set_float32_matmul_precision: 'high' lets CUDA use TF32) inside the block, restored after it."""
    prev = torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision()
    torch.use_deterministic_algorithms(cfg.deterministic)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0])
        torch.set_float32_matmul_precision(prev[1])


def train_fold(task: FoldTask, *, progress: bool = True, position: int = 0, on_epoch_end=None) -> dict:
    """Train, select and predict one fold; writes the fold's files and returns its result dict.

    on_epoch_end(task, state): called after every epoch (after its checkpoint), e.g. to stop a test run.
    """
    from tqdm.auto import tqdm

    cfg, t0, c0 = task.cfg, time.perf_counter(), time.process_time()
    fdir = Path(task.fold_dir)
    fdir.mkdir(parents=True, exist_ok=True)
    last = fdir / "last.pt"
    data = prepare_fold(task)
    with numerics(cfg):
        torch.manual_seed(task.seed)
        model = build_model(cfg.model, cfg.model_kwargs, image_size=task.x.shape[-1]).to(cfg.device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        state = load_resume_point(last, model, opt)

        def epoch_end(st: TrainState) -> None:
            if checkpoint_due(st, cfg):
                save_resume_point(last, model, opt, st)
            if on_epoch_end is not None:
                on_epoch_end(task, st)

        with tqdm(
            total=cfg.epochs,
            initial=state.epoch,
            desc=f"fold {task.index} {task.name}",
            unit="epoch",
            leave=False,
            position=position,
            disable=not progress,
        ) as bar:
            state = train_epochs(
                model, opt, data, cfg, order_key=(cfg.seed, task.index), state=state, on_epoch_end=epoch_end, bar=bar
            )
        prob_last = predict_proba(model, data.x_test) if cfg.selection == "oracle-release" else None
        chosen = select_epoch(model, state)
        prob = predict_proba(model, data.x_test)
    result = write_fold(
        task,
        data,
        model,
        state,
        chosen,
        prob,
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        prob_last=prob_last,
    )
    discard_checkpoints(last)  # last.pt and last.prev.pt
    return result


def select_epoch(model, state: TrainState) -> int:
    """Load the selected epoch's weights into ``model`` (the best one when validation or the oracle chose
    it, else the last) and return its number."""
    if state.best is None:
        return state.epoch
    model.load_state_dict(state.best["state_dict"])
    return int(state.best["epoch"])


def load_resume_point(path: Path, model, opt) -> TrainState:
    """Restore model, optimiser and torch RNG from ``last.pt`` if it exists; the state to continue from.
    A damaged ``last.pt`` falls back to ``last.prev.pt``, else to a fresh start, with a warning naming
    the file (mer.train.recovery)."""

    def apply(ck) -> TrainState:
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        return TrainState(
            epoch=int(ck["epoch"]), history=ck["history"], best=ck["best"], stopped=ck.get("stopped", False)
        )

    return resume(path, apply, model, opt) or TrainState()


def save_resume_point(path: Path, model, opt, state: TrainState) -> None:
    """Write ``last.pt`` atomically; the previous one is kept as ``last.prev.pt`` (mer.train.recovery)."""
    save_checkpoint(
        path,
        {
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(),
            "history": state.history,
            "best": state.best,
            "epoch": state.epoch,
            "stopped": state.stopped,
        },
    )


def save_model(path: Path, task: FoldTask, data: FoldArrays, model, chosen: int) -> None:
    """model.pt: the evaluated weights with everything needed to rebuild and apply them (mer predict)."""
    cfg = task.cfg
    atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "config": cfg.to_dict(),
            "model": cfg.model,
            "model_kwargs": dict(cfg.model_kwargs),
            "image_size": int(task.x.shape[-1]),
            "input": cfg.input,
            "prep": cfg.prep.to_dict(),
            "norm_mean": [float(v) for v in data.mean],
            "norm_std": [float(v) for v in data.std],
            "labels": list(LABEL_NAMES),
            "fold": task.name,
            "fold_index": task.index,
            "epoch": chosen,
            "selection": cfg.selection_label,
            "valid_estimate": cfg.valid_estimate,
        },
    )


def write_fold(
    task: FoldTask,
    data: FoldArrays,
    model,
    state: TrainState,
    chosen: int,
    prob: np.ndarray,
    *,
    seconds: float,
    cpu_seconds: float,
    prob_last: np.ndarray | None = None,
) -> dict:
    """Write predictions.csv, history.json, model.pt and (last: the fold is finished) result.json.
    prob_last: with selection 'oracle-release', the last epoch's test probabilities (the same training
    evaluated with a fixed budget), written to predictions_last_epoch.csv."""
    cfg, fdir, test = task.cfg, Path(task.fold_dir), data.test
    y_test = task.y[test]
    pred = prob.argmax(1)
    ids = [task.ids[i] for i in test]
    write_predictions(fdir / "predictions.csv", prediction_rows(test, ids, y_test, prob))
    if prob_last is not None:
        write_predictions(fdir / "predictions_last_epoch.csv", prediction_rows(test, ids, y_test, prob_last))
    atomic_write_json(fdir / "history.json", state.history)
    if cfg.save_models:
        save_model(fdir / "model.pt", task, data, model, chosen)
    history = state.history
    result = {
        "fold": task.name,
        "index": task.index,
        "dir": task.dirname,
        "test_subjects": sorted({"/".join(task.subjects[i]) for i in test}),
        "n_fit": data.n_real,
        "n_generated": data.n_generated,
        "n_val": int(len(data.val)),
        "n_test": int(len(test)),
        "epochs_run": len(history),
        "epoch_selected": chosen,
        "selection": cfg.selection_label,
        "selection_mode": cfg.selection,
        "fold_batch": cfg.fold_batch,
        "valid_estimate": cfg.valid_estimate,
        "oracle": not cfg.valid_estimate,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),  # this process's CPU time (all threads)
        "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in history])) if history else 0.0, 3),
        "threads": torch.get_num_threads(),
        "test_acc": float((pred == y_test).mean()) if len(test) else None,
        "indices_used": data.log.as_dict(),
        "split": {
            "train": np.asarray(task.train).tolist(),
            "fit": data.fit.tolist(),
            "val": data.val.tolist(),
            "test": test.tolist(),
        },
    }
    atomic_write_json(fdir / "result.json", result)
    return result

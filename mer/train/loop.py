"""Training and evaluating one fold: normalise with the fold's training statistics, train a fresh model,
select the epoch (fixed / validation / labelled oracle), predict the held-out subjects.

Every access to the sample arrays goes through :class:`IndexLog`, which records which sample indices were
used for what ('fit', 'norm', 'val', 'augment', 'select', 'predict'). ``result.json`` stores that record,
so tests (and users) can check that no held-out sample reached training, normalisation, validation,
augmentation or model selection. Only the HTNet oracle reproduction puts test indices under 'select'.

Resuming: ``last.pt`` (model, optimiser, torch RNG, history, best state) is written every
``checkpoint_every`` epochs; a rerun continues from it. The minibatch order of epoch e is drawn from
``numpy.random.default_rng([seed, fold, e])``, so a resumed fold sees the same batches as an
uninterrupted one and ends with the same weights.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mer.train.config import TrainConfig
from mer.train.folds import validation_split
from mer.train.models import NUM_CLASSES, build_model
from mer.train.rundir import atomic_torch_save, atomic_write_json, atomic_write_text

LABEL_NAMES = ("negative", "positive", "surprise")
CHECKPOINT_FORMAT = "mer.train/1"
#: testing hook: "FOLD:EPOCH" raises InjectedInterrupt right after that epoch of that fold (index) is done
INTERRUPT_ENV = "MER_TRAIN_INTERRUPT_AT"


class InjectedInterrupt(RuntimeError):
    """Raised by the MER_TRAIN_INTERRUPT_AT testing hook (simulates a killed run)."""


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


@dataclass
class IndexLog:
    """Which sample indices were read, by purpose."""

    used: dict = field(default_factory=dict)

    def take(self, purpose: str, arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        self.used.setdefault(purpose, set()).update(int(i) for i in idx)
        return arr[idx]

    def as_dict(self) -> dict:
        return {k: sorted(v) for k, v in sorted(self.used.items())}


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of x (N, C, H, W) in float64; a constant channel gets std 1."""
    x64 = x.astype(np.float64)
    mean, std = x64.mean(axis=(0, 2, 3)), x64.std(axis=(0, 2, 3))
    return mean, np.where(std > 1e-12, std, 1.0)


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)


def class_weight_vector(y: np.ndarray, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    w = np.where(counts > 0, len(y) / (NUM_CLASSES * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict_proba(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 3) softmax probabilities of normalised inputs x (N, 3, S, S)."""
    model.eval()
    out = [F.softmax(model(torch.from_numpy(x[i:i + batch])), dim=1) for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, NUM_CLASSES), np.float32)


def _scores(y: np.ndarray, prob: np.ndarray) -> dict:
    from mer.metrics import uf1_uar

    pred = prob.argmax(1)
    uf1, uar = uf1_uar(y, pred)
    loss = float(-np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, None)).mean())
    return {"loss": loss, "acc": float((pred == y).mean()), "uf1": uf1, "uar": uar}


def _maybe_interrupt(fold: int, epoch: int) -> None:
    spec = os.environ.get(INTERRUPT_ENV)
    if spec and spec == f"{fold}:{epoch}":
        raise InjectedInterrupt(f"{INTERRUPT_ENV}={spec}: interrupting fold {fold} after epoch {epoch}")


def _ddpm_samples(cfg: TrainConfig, x_fit: np.ndarray, y_fit: np.ndarray, task: FoldTask, seed: int):
    from mer.augment import DDPMConfig, augment_fold

    dcfg = DDPMConfig(**{"progress": False, **cfg.ddpm})
    ratio = cfg.augment_ratio if cfg.augment_ratio == "balance" else float(cfg.augment_ratio)
    cache = Path(cfg.cache_dir).expanduser().parent / "ddpm"
    return augment_fold(x_fit, y_fit, cfg=dcfg, cache_dir=cache, fold_key=task.dirname, seed=seed, ratio=ratio)


def train_fold(task: FoldTask, *, progress: bool = True, position: int = 0) -> dict:
    """Train, select and predict one fold; writes the fold's files and returns its result dict."""
    from tqdm.auto import tqdm

    cfg, t0, c0 = task.cfg, time.perf_counter(), time.process_time()
    fdir = Path(task.fold_dir)
    fdir.mkdir(parents=True, exist_ok=True)
    log = IndexLog()
    seed = cfg.seed * 1000 + task.index
    train = np.asarray(task.train, np.int64)
    test = np.asarray(task.test, np.int64)
    if cfg.select == "val":
        fit, val = validation_split(train, task.subjects, cfg.val_fraction, seed)
    else:
        fit, val = train, np.zeros(0, np.int64)
    # normalisation statistics: the fit subset of the training subjects only
    if cfg.normalize == "channel":
        mean, std = channel_stats(log.take("norm", task.x, fit))
    else:
        mean, std = np.zeros(task.x.shape[1]), np.ones(task.x.shape[1])
    x_fit = normalise(log.take("fit", task.x, fit), mean, std)
    y_fit = log.take("fit", task.y, fit)
    n_real = len(y_fit)
    n_gen = 0
    if cfg.augment == "ddpm":
        log.take("augment", task.y, fit)  # the DDPM sees exactly the fit arrays
        x_gen, y_gen = _ddpm_samples(cfg, x_fit, y_fit, task, seed)
        n_gen = len(y_gen)
        x_fit = np.concatenate([x_fit, x_gen.astype(np.float32)])
        y_fit = np.concatenate([y_fit, y_gen.astype(np.int64)])
    x_val = normalise(log.take("val", task.x, val), mean, std) if len(val) else None
    y_val = log.take("val", task.y, val) if len(val) else None
    if cfg.reproduce_htnet_oracle:  # the released HTNet's selection: on the held-out subject (labelled)
        x_sel = normalise(log.take("select", task.x, test), mean, std)
        y_sel = log.take("select", task.y, test)

    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic)
    try:
        torch.manual_seed(seed)
        model = build_model(cfg.model, cfg.model_kwargs, image_size=task.x.shape[-1])
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        weight = class_weight_vector(y_fit, cfg.class_weights)
        history: list[dict] = []
        best: dict | None = None  # {"epoch", "score", "state_dict"}
        start = 0
        last = fdir / "last.pt"
        if last.exists():
            ck = torch.load(last, map_location="cpu", weights_only=True)
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            torch.set_rng_state(ck["rng"])
            history, best, start = ck["history"], ck["best"], int(ck["epoch"])
        xt, yt = torch.from_numpy(x_fit), torch.from_numpy(y_fit)
        n = len(yt)
        steps = (n + cfg.batch_size - 1) // cfg.batch_size
        bar = tqdm(total=cfg.epochs, initial=start, desc=f"fold {task.index} {task.name}", unit="epoch",
                   leave=False, position=position, disable=not progress)
        stopped = cfg.select == "val" and best is not None and len(history) - best["epoch"] >= cfg.patience
        epoch = start
        while epoch < cfg.epochs and not stopped:
            te = time.perf_counter()
            model.train()
            order = torch.from_numpy(np.random.default_rng([cfg.seed, task.index, epoch]).permutation(n))
            tot_loss, correct = 0.0, 0
            for s in range(steps):
                b = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                logits = model(xt[b])
                loss = F.cross_entropy(logits, yt[b], weight=weight, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot_loss += loss.item() * len(b)
                correct += int((logits.argmax(1) == yt[b]).sum())
            epoch += 1
            rec = {"epoch": epoch, "train_loss": tot_loss / n, "train_acc": correct / n}
            score = None
            if x_val is not None:
                v = _scores(y_val, predict_proba(model, x_val))
                rec.update({f"val_{k}": val_ for k, val_ in v.items()})
                score = (v["uf1"], -v["loss"])
            if cfg.reproduce_htnet_oracle:
                o = _scores(y_sel, predict_proba(model, x_sel))
                rec.update({f"oracle_test_{k}": val_ for k, val_ in o.items()})
                score = (o["acc"],)
            rec["seconds"] = round(time.perf_counter() - te, 3)
            history.append(rec)
            if score is not None and (best is None or tuple(score) > tuple(best["score"])):
                best = {"epoch": epoch, "score": list(score), "state_dict": copy.deepcopy(model.state_dict())}
            if cfg.select == "val" and epoch - best["epoch"] >= cfg.patience:
                stopped = True
            if epoch % cfg.checkpoint_every == 0 or stopped or epoch == cfg.epochs:
                atomic_torch_save(last, {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                                         "rng": torch.get_rng_state(), "history": history, "best": best,
                                         "epoch": epoch})
            bar.set_postfix(loss=f"{rec['train_loss']:.3f}", **({"val_uf1": f"{rec['val_uf1']:.3f}"}
                                                                if "val_uf1" in rec else {}))
            bar.update()
            _maybe_interrupt(task.index, epoch)
        bar.close()
        if best is not None:  # select='val' or the oracle: the chosen epoch's weights
            model.load_state_dict(best["state_dict"])
            chosen = int(best["epoch"])
        else:
            chosen = len(history)
        prob = predict_proba(model, normalise(log.take("predict", task.x, test), mean, std))
    finally:
        torch.use_deterministic_algorithms(prev_det)
    pred = prob.argmax(1)
    y_test = task.y[test]
    _write_predictions(fdir / "predictions.csv", task, test, y_test, pred, prob)
    atomic_write_json(fdir / "history.json", history)
    atomic_torch_save(fdir / "model.pt", {
        "format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(), "config": cfg.to_dict(),
        "model": cfg.model, "model_kwargs": dict(cfg.model_kwargs), "image_size": int(task.x.shape[-1]),
        "input": cfg.input, "prep": cfg.prep.to_dict(), "norm_mean": [float(v) for v in mean],
        "norm_std": [float(v) for v in std], "labels": list(LABEL_NAMES), "fold": task.name,
        "fold_index": task.index, "epoch": chosen, "selection": cfg.selection_label})
    result = {
        "fold": task.name, "index": task.index, "dir": task.dirname,
        "test_subjects": sorted({"/".join(task.subjects[i]) for i in test}),
        "n_fit": n_real, "n_generated": n_gen, "n_val": int(len(val)), "n_test": int(len(test)),
        "epochs_run": len(history), "epoch_selected": chosen, "selection": cfg.selection_label,
        "oracle": bool(cfg.reproduce_htnet_oracle), "seconds": round(time.perf_counter() - t0, 2),
        "cpu_seconds": round(time.process_time() - c0, 2),  # this process's CPU time (all its threads)
        "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in history])) if history else 0.0, 3),
        "threads": torch.get_num_threads(),
        "test_acc": float((pred == y_test).mean()) if len(test) else None,
        "indices_used": log.as_dict(),
        "split": {"train": train.tolist(), "fit": fit.tolist(), "val": val.tolist(), "test": test.tolist()},
    }
    atomic_write_json(fdir / "result.json", result)
    if last.exists():
        last.unlink()
    return result


def _write_predictions(path: Path, task: FoldTask, test, y_test, pred, prob) -> None:
    lines = ["index,dataset,subject,clip,label,pred," + ",".join(f"p_{n}" for n in LABEL_NAMES)]
    for i, t, p, pr in zip(test, y_test, pred, prob, strict=True):
        ds, subj, clip = task.ids[i]
        lines.append(f"{int(i)},{ds},{subj},{clip},{int(t)},{int(p)}," + ",".join(f"{v:.6f}" for v in pr))
    atomic_write_text(path, "\n".join(lines) + "\n")

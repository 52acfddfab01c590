"""ESAAT on a trained run, fold by fold: selection -> removal (fade-out) -> agent conversion -> fine-tuning ->
prediction of the held-out subjects, scored with the run's protocol (``mer.evaluation``).

    from mer.esaat import ESAATConfig, prune_run
    summary = prune_run("runs/demo", ESAATConfig(remove=2), out="runs/demo/esaat/k2")

Per fold everything that shapes the pruned model (calibration set, selection, fine-tuning, normalisation)
uses that fold's training (fit) samples only; the held-out subjects are touched once, for prediction.

Output (a run directory ``mer evaluate`` can score):

    OUT/config.json, folds.json, samples.csv   copies of the run's (same protocol, same samples)
    OUT/esaat_config.json                      the ESAATConfig
    OUT/folds/<fold>/model.pt                  pruned state_dict + the structure to rebuild it (load_pruned)
    OUT/folds/<fold>/esaat.json                selection (order, transfer entropies, costs), before/after
    OUT/folds/<fold>/predictions.csv, history.json (fine-tuning), result.json
    OUT/metrics.json, summary.md, predictions.csv, megc_log.txt, confusion.png, learning_curves.png
    OUT/esaat.json                             run summary: before/after params, FLOPs, latency, UF1/UAR,
                                               ranking agreement across folds
    OUT/transfer_entropy.png                   per-layer transfer entropy per fold (bar plot)

A fold is finished once its result.json is written: rerunning the same setting into OUT resumes there.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mer.esaat.agreement import ranking_agreement, selection_agreement
from mer.esaat.finetune import FinetuneConfig, finetune
from mer.esaat.remove import convert_remaining, model_cost, remove_layers
from mer.esaat.select import CRITERIA, greedy_select
from mer.io import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    prediction_rows,
    write_predictions,
)
from mer.options import option
from mer.train import TrainConfig, build_model, normalise, predict_proba
from mer.train.config import AUGMENTS, augment_ratio_error, augment_ratio_option, ddpm_option

FORMAT = "mer.esaat/1"
_RUN_FILES = ("config.json", "folds.json", "samples.csv", "excluded.json")  # copied from the run
_AUG = "fine-tuning augmentation"


@dataclass
class ESAATConfig:
    """One ESAAT experiment. Exactly one of ``remove`` (k layers), ``budget`` (keep at most this fraction of
    the parameters) or ``flops_budget`` (of the FLOPs)."""

    remove: int | None = option(
        None, "remove K attention layers per fold", metavar="K", exclusive="what", required=True
    )
    budget: float | None = option(
        None,
        "remove layers until the model keeps at most FRACTION of its parameters",
        metavar="FRACTION",
        exclusive="what",
    )
    flops_budget: float | None = option(
        None, "remove layers until the model keeps at most FRACTION of its FLOPs", metavar="FRACTION", exclusive="what"
    )
    convert: bool = option(True, "convert the remaining softmax layers to agent attention")
    agent_num: int | None = option(None, "agents per converted layer (default: the model's configured agent_num)")
    skip_scale: float = option(
        2.0,
        "a removed block computes skip_scale·x before its FFN: 2 = attention -> "
        "identity (the fade-out's end point), 1 = sub-layer skipped (needs --fade-epochs 0)",
    )
    criterion: str = option("abs", "greedy: smallest |T| (abs) or smallest signed T (signed)", choices=CRITERIA)
    calib_size: int = option(256, "calibration samples per fold (drawn from its fit samples)", flag="--calib")
    full_cov: bool = option(False, "entropy from the full covariance (½ log det) instead of Σ log std")
    seed: int = option(0, "calibration draw, new agent parameters, fine-tuning batch order")
    latency_batch: int = option(32, "batch of the CPU latency measurement (reported per sample)")
    finetune: FinetuneConfig = option(FinetuneConfig, nested=True)
    augment: str = option(
        "none",
        "DDPM samples added to each fold's fine-tuning set (one DDPM per fold, trained on that fold's fit "
        "samples only; the class weights stay those of the real samples)",
        choices=AUGMENTS,
        group=_AUG,
    )
    augment_ratio: str = augment_ratio_option(_AUG)
    ddpm: dict = ddpm_option(_AUG)
    ddpm_cache: str | None = option(
        None,
        "keep trained DDPMs and their samples here (default: beside the run's preprocessing cache, where "
        "`mer train --augment ddpm` keeps them; a DDPM is reused only for the same arrays, settings and seed)",
        metavar="DIR",
        group=_AUG,
    )

    def __post_init__(self):
        if isinstance(self.finetune, dict):
            self.finetune = FinetuneConfig(**self.finetune)
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if (msg := augment_ratio_error(self.augment_ratio)) is not None:
            raise ValueError(msg)
        if self.ddpm:
            if self.augment == "none":
                raise ValueError("--ddpm-arg is given but --augment is none; add --augment ddpm or drop --ddpm-arg")
            self.ddpm_config()  # unknown keys and bad values fail here, before any fold runs
        if sum(v is not None for v in (self.remove, self.budget, self.flops_budget)) != 1:
            raise ValueError("give exactly one of remove (k layers), budget (parameter fraction) or flops_budget")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.calib_size < 2:
            raise ValueError(f"calib_size must be >= 2, got {self.calib_size}")
        if self.finetune.fade_epochs and self.skip_scale != 2.0:
            raise ValueError(
                "the fade-out ends at skip_scale 2.0 (identity branch); with another skip_scale set fade_epochs=0"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def ddpm_config(self):
        from mer.augment import DDPMConfig

        try:
            return DDPMConfig(**{"progress": False, **self.ddpm})
        except TypeError as e:
            raise ValueError(f"--ddpm-arg: {e} (the keys are mer.augment.DDPMConfig's fields)") from None

    def tag(self) -> str:
        """Default output folder name, e.g. 'k2', 'budget0.8', 'flops0.7' (+ '-softmax' without conversion)."""
        t = (
            f"k{self.remove}"
            if self.remove is not None
            else f"budget{self.budget}"
            if self.budget is not None
            else f"flops{self.flops_budget}"
        )
        return t + ("" if self.convert else "-softmax") + ("-ddpm" if self.augment == "ddpm" else "")


def calibration_indices(fit: np.ndarray, size: int, seed: int, fold_index: int) -> np.ndarray:
    """``size`` samples of ``fit`` (all of them if fewer), drawn with default_rng([seed, fold, 7]), sorted."""
    fit = np.asarray(fit, np.int64)
    if len(fit) <= size:
        return fit.copy()
    return np.sort(np.random.default_rng([seed, fold_index, 7]).choice(fit, size, replace=False))


LATENCY_THREADS = 1  # the latency is measured on one thread, whatever the run uses, so runs compare


def per_sample_latency_ms(model: nn.Module, example: torch.Tensor, batch: int) -> float:
    """CPU inference time per sample (ms) on LATENCY_THREADS thread(s): the minimum over 5 timed forwards
    of a batch of ``batch``."""
    from mer.models.profile import latency_ms

    x = example[:1].expand(batch, *example.shape[1:]).contiguous()
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        return latency_ms(model, x, reps=5, stat="min") / batch
    finally:
        torch.set_num_threads(threads)


def esaat_model(
    model: nn.Module,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    cfg: ESAATConfig,
    *,
    fold_index: int = 0,
    calib: np.ndarray | None = None,
    progress: bool = False,
    x_gen: np.ndarray | None = None,
    y_gen: np.ndarray | None = None,
) -> tuple[nn.Module, dict]:
    """ESAAT on one model, in place: select on ``x_fit[calib]`` (normalised, training samples only),
    remove (with the fade-out while fine-tuning), convert the rest, fine-tune on (x_fit, y_fit) plus the
    generated (x_gen, y_gen) when given (selection and class weights use the real samples only).
    Returns (model, record) with the selection, the converted layers and the fine-tuning history."""
    if calib is None:
        calib = calibration_indices(np.arange(len(x_fit)), cfg.calib_size, cfg.seed, fold_index)
    xc = torch.from_numpy(np.ascontiguousarray(x_fit[calib]))
    t0 = time.perf_counter()
    sel = greedy_select(
        model,
        xc,
        k=cfg.remove,
        budget=cfg.budget,
        flops_budget=cfg.flops_budget,
        skip_scale=cfg.skip_scale,
        criterion=cfg.criterion,
        convert=cfg.convert,
        agent_num=cfg.agent_num,
        full=cfg.full_cov,
        progress=progress,
    )
    t_sel = time.perf_counter() - t0
    ft = cfg.finetune
    fade = list(sel.order) if ft.epochs and ft.fade_epochs else []
    if not fade:
        remove_layers(model, sel.order, cfg.skip_scale)
    torch.manual_seed(1000 * cfg.seed + fold_index)  # the agent-only parameters of converted layers
    converted = convert_remaining(model, cfg.agent_num, exclude=fade) if cfg.convert else []
    t1 = time.perf_counter()
    n_gen = 0 if y_gen is None else len(y_gen)
    if n_gen:
        x_ft = np.concatenate([x_fit, np.asarray(x_gen, np.float32)])
        y_ft = np.concatenate([y_fit, np.asarray(y_gen, np.int64)])
    else:
        x_ft, y_ft = x_fit, y_fit
    history = finetune(
        model,
        x_ft,
        y_ft,
        ft,
        n_real=len(y_fit),
        fade=fade,
        skip_scale=cfg.skip_scale,
        seed=(cfg.seed, fold_index, 77),
        progress=progress,
        desc=f"fine-tune fold {fold_index}",
    )
    record = {
        "selection": sel.to_dict(),
        "removed": list(sel.order),
        "converted": converted,
        "skip_scale": cfg.skip_scale,
        "agent_num": cfg.agent_num,
        "calibration_size": int(len(calib)),
        "n_real": int(len(y_fit)),
        "n_generated": int(n_gen),
        "selection_seconds": round(t_sel, 3),
        "finetune_seconds": round(time.perf_counter() - t1, 3),
        "history": history,
    }
    return model, record


def load_pruned(path, map_location="cpu") -> nn.Module:
    """Rebuild a pruned fold model written by ``prune_run`` (``OUT/folds/<fold>/model.pt``)."""
    ck = torch.load(path, map_location=map_location, weights_only=True)
    if ck.get("esaat_format") != FORMAT:
        raise ValueError(
            f"{path} is not an ESAAT checkpoint (no esaat_format {FORMAT!r}); plain fold models "
            "load with mer.train's build_model + load_state_dict"
        )
    model = build_model(ck["model"], ck["model_kwargs"], image_size=ck["image_size"], check=False)
    e = ck["esaat"]
    remove_layers(model, e["removed"], e["skip_scale"])
    for name in e["converted"]:
        model.convert_attention(name, "agent", agent_num=e["agent_num"])
    model.load_state_dict(ck["state_dict"], strict=True)
    return model.eval()


# --- a whole run ----------------------------------------------------------------------------------------
def _read_run(run: Path):
    if not (run / "config.json").exists() or not (run / "folds.json").exists():
        raise FileNotFoundError(f"{run} is not a `mer train` run directory (no config.json / folds.json)")
    tcfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    folds = json.loads((run / "folds.json").read_text())
    missing = [f["name"] for f in folds if not (run / "folds" / f["dir"] / "result.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} fold(s) of {run} are not finished ({', '.join(missing[:5])}); "
            "finish the run with `mer train` (same options) before pruning it"
        )
    return tcfg, folds


def _check_samples(run: Path, samples, y) -> None:
    import csv

    with open(run / "samples.csv", newline="") as f:
        saved = [(r["dataset"], r["subject"], r["clip"], int(r["label"])) for r in csv.DictReader(f)]
    now = [(s.dataset, s.subject, s.clip, int(t)) for s, t in zip(samples, y, strict=True)]
    if saved != now:
        raise RuntimeError(
            f"the prepared samples differ from {run}/samples.csv (the data changed since training); "
            "prune with the data the run was trained on"
        )


def ddpm_samples(
    cfg: ESAATConfig, tcfg: TrainConfig | None, fold: dict, x_fit: np.ndarray, y_fit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The fold's DDPM samples for fine-tuning (none unless ``cfg.augment == 'ddpm'``): a class-conditional
    DDPM trained on the fold's normalised fit arrays only, seeded like `mer train --augment ddpm` (run seed ·
    1000 + fold index), so a run trained with that augmentation shares its cached DDPMs."""
    if cfg.augment == "none":
        return np.zeros((0, *x_fit.shape[1:]), np.float32), np.zeros(0, np.int64)
    from mer.augment import augment_fold

    cache = cfg.ddpm_cache or str(Path(tcfg.cache_dir).expanduser().parent / "ddpm")
    ratio = cfg.augment_ratio if cfg.augment_ratio == "balance" else float(cfg.augment_ratio)
    x_gen, y_gen = augment_fold(
        x_fit,
        y_fit,
        cfg=cfg.ddpm_config(),
        cache_dir=Path(cache).expanduser(),
        fold_key=fold["dir"],
        seed=tcfg.seed * 1000 + fold["index"],
        ratio=ratio,
    )
    return x_gen.astype(np.float32), y_gen.astype(np.int64)


def prune_fold(
    run: Path,
    out: Path,
    fold: dict,
    cfg: ESAATConfig,
    x: np.ndarray,
    y: np.ndarray,
    ids: list,
    progress: bool = False,
    tcfg: TrainConfig | None = None,
) -> dict:
    """ESAAT on fold ``fold`` (a folds.json entry) of ``run``; writes OUT/folds/<dir>/ and returns its record.
    ``tcfg`` (the run's training config) is needed with ``cfg.augment == 'ddpm'``."""
    t0, c0 = time.perf_counter(), time.process_time()
    src = run / "folds" / fold["dir"]
    result = json.loads((src / "result.json").read_text())
    ck = torch.load(src / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(ck["model"], ck["model_kwargs"], image_size=ck["image_size"], check=False)
    model.load_state_dict(ck["state_dict"])
    fit = np.asarray(result["split"]["fit"], np.int64)
    test = np.asarray(fold["test"], np.int64)
    held = set(fold["test_subjects"])
    leak = sorted({f"{ids[i][0]}/{ids[i][1]}" for i in fit} & held)
    if leak or set(fit.tolist()) & set(test.tolist()):
        raise RuntimeError(f"fold {fold['name']}: the fit samples include held-out subjects {leak}; refusing to prune")
    mean, std = np.asarray(ck["norm_mean"]), np.asarray(ck["norm_std"])
    x_fit, y_fit = normalise(x[fit], mean, std), y[fit]
    calib = calibration_indices(np.arange(len(fit)), cfg.calib_size, cfg.seed, fold["index"])  # positions in fit
    calib_global = fit[calib]
    example = torch.from_numpy(x_fit[:1])
    before = {
        **model_cost(model, example),
        "latency_ms_per_sample": per_sample_latency_ms(model, example, cfg.latency_batch),
    }
    if cfg.augment != "none" and tcfg is None:
        raise ValueError("prune_fold with augment='ddpm' needs the run's TrainConfig (tcfg)")
    x_gen, y_gen = ddpm_samples(cfg, tcfg, fold, x_fit, y_fit)
    model, rec = esaat_model(
        model, x_fit, y_fit, cfg, fold_index=fold["index"], calib=calib, progress=progress, x_gen=x_gen, y_gen=y_gen
    )
    after = {
        **model_cost(model, example),
        "latency_ms_per_sample": per_sample_latency_ms(model, example, cfg.latency_batch),
    }
    prob = predict_proba(model, normalise(x[test], mean, std))
    d = out / "folds" / fold["dir"]
    d.mkdir(parents=True, exist_ok=True)
    write_predictions(d / "predictions.csv", prediction_rows(test, [ids[i] for i in test], y[test], prob))
    atomic_write_json(d / "history.json", rec["history"])
    atomic_torch_save(
        d / "model.pt",
        {
            **{k: v for k, v in ck.items() if k != "state_dict"},
            "state_dict": model.state_dict(),
            "esaat_format": FORMAT,
            "esaat": {k: rec[k] for k in ("removed", "converted", "skip_scale", "agent_num")},
            "esaat_config": cfg.to_dict(),
        },
    )
    fold_rec = {
        "fold": fold["name"],
        "index": fold["index"],
        "before": before,
        "after": after,
        "calibration_indices": calib_global.tolist(),
        **{k: v for k, v in rec.items() if k != "history"},
    }
    atomic_write_json(d / "esaat.json", fold_rec)
    secs = time.perf_counter() - t0
    atomic_write_json(
        d / "result.json",
        {
            "fold": fold["name"],
            "index": fold["index"],
            "dir": fold["dir"],
            "test_subjects": fold["test_subjects"],
            "n_fit": int(len(fit)),
            "n_generated": rec["n_generated"],
            "n_test": int(len(test)),
            "epochs_run": len(rec["history"]),
            "epoch_selected": len(rec["history"]),
            "selection": f"ESAAT fine-tune, last epoch, of the model chosen by: {result['selection']}",
            "valid_estimate": result.get("valid_estimate", not result.get("oracle", False)),
            "seconds": round(secs, 2),
            "cpu_seconds": round(time.process_time() - c0, 2),
            "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in rec["history"]])), 3)
            if rec["history"]
            else 0.0,
            "threads": torch.get_num_threads(),
            "test_acc": float((prob.argmax(1) == y[test]).mean()) if len(test) else None,
            "indices_used": {
                "calibrate": calib_global.tolist(),
                "fit": fit.tolist(),
                "norm": result["indices_used"].get("norm", fit.tolist()),
                "predict": test.tolist(),
            },
            "removed": rec["removed"],
            "converted": rec["converted"],
        },
    )
    return fold_rec


def _prune_in_worker(fold: dict, run: Path, out: Path, cfg: ESAATConfig, tcfg: TrainConfig) -> dict:
    from mer.train import pool

    a = pool.shared()
    return prune_fold(run, out, fold, cfg, a["x"], a["y"], a["ids"], progress=False, tcfg=tcfg)


def _prepare_out(run: Path, out: Path, config: dict, force: bool) -> None:
    """Create ``out``, or accept it for resuming (the same ESAAT config on the same run), or replace it with
    ``force``; anything else is a FileExistsError that says what differs."""
    if out.resolve() == run.resolve():
        raise ValueError("the output folder must differ from the run directory")
    if out.exists() and any(out.iterdir()):
        if force:
            shutil.rmtree(out)
        else:
            saved_path = out / "esaat_config.json"
            saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
            if saved is None:
                raise FileExistsError(
                    f"{out} exists, is not empty and is not a `mer prune` output; choose another --out or pass "
                    "--force to replace it"
                )
            config = json.loads(json.dumps(config))  # as saved: tuples become lists
            if saved != config:
                diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
                raise FileExistsError(
                    f"{out} holds a `mer prune` of another setting (differs in: {', '.join(diff)}); rerun with "
                    "the same options to resume it, choose another --out, or pass --force to replace it"
                )
            for name in _RUN_FILES:
                if (run / name).exists() and (out / name).exists():
                    if (run / name).read_bytes() != (out / name).read_bytes():
                        raise FileExistsError(
                            f"{run / name} changed since {out} was started (the run was retrained?); pass --force "
                            "to prune it afresh"
                        )
            return
    out.mkdir(parents=True, exist_ok=True)
    for name in _RUN_FILES:
        if (run / name).exists():
            shutil.copyfile(run / name, out / name)
    atomic_write_json(out / "esaat_config.json", config)


def prune_run(run, cfg: ESAATConfig, out=None, *, force: bool = False, progress: bool = True, workers: int = 1) -> dict:
    """ESAAT on every fold of the finished ``mer train`` run ``run``; writes ``out`` (default
    RUN/esaat/<cfg.tag()>) and returns the run summary (also OUT/esaat.json).

    ``workers`` > 1 prunes that many folds at once in worker processes (the cores split between them; the
    results equal the serial ones at the same torch thread count). Rerunning the same setting into the same
    ``out`` resumes: finished folds (their result.json written) are kept, the others done."""
    from tqdm.auto import tqdm

    from mer.evaluation import write_report
    from mer.train import pool
    from mer.train.data import load_inputs
    from mer.train.runner import FoldFailure

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    run = Path(run)
    tcfg, folds = _read_run(run)
    out = Path(out) if out is not None else run / "esaat" / cfg.tag()
    _prepare_out(run, out, {"format": FORMAT, "run": str(run.resolve()), **cfg.to_dict()}, force)
    inputs = load_inputs(tcfg, workers=1, progress=progress)
    samples, x, y = inputs.samples, inputs.x, inputs.y
    _check_samples(run, samples, y)
    ids = [(s.dataset, s.subject, s.clip) for s in samples]
    by_index, todo = {}, []
    for fold in folds:
        d = out / "folds" / fold["dir"]
        if (d / "result.json").is_file() and (d / "esaat.json").is_file():
            by_index[fold["index"]] = json.loads((d / "esaat.json").read_text())
        else:
            todo.append(fold)
    bar = tqdm(
        total=len(folds), initial=len(folds) - len(todo), desc=f"ESAAT {cfg.tag()}", unit="fold", disable=not progress
    )

    def finished(fold, rec):
        by_index[fold["index"]] = rec
        bar.update()
        bar.set_postfix(removed=",".join(n.replace(".attn", "") for n in rec["removed"]) or "-")

    try:
        if workers <= 1 or len(todo) <= 1:
            for fold in todo:
                finished(fold, prune_fold(run, out, fold, cfg, x, y, ids, progress=progress, tcfg=tcfg))
        else:
            failures = pool.map_in_workers(
                _prune_in_worker,
                todo,
                workers=workers,
                shared={"x": x, "y": y, "ids": ids},
                on_result=finished,
                args=(run, out, cfg, tcfg),
            )
            if failures:
                errors = [f"fold {f['index']} ({f['name']}): {type(e).__name__}: {e}" for f, e in failures]
                raise FoldFailure.listing(errors, "rerun the same command to resume")
    finally:
        bar.close()
    recs = [by_index[fold["index"]] for fold in folds]
    metrics = write_report(out, print_table=False, plots=True)
    before_m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else None

    def mean(key, part):
        return float(np.mean([r[part][key] for r in recs]))

    from mer.models.profile import machine

    summary = {
        "format": FORMAT,
        "run": str(run.resolve()),
        "config": cfg.to_dict(),
        "model": tcfg.model,
        "augment": {
            "kind": cfg.augment,
            "ratio": cfg.augment_ratio,
            "n_real_mean": float(np.mean([r["n_real"] for r in recs])),
            "n_generated_mean": float(np.mean([r["n_generated"] for r in recs])),
        },
        "latency": {
            "what": "CPU inference ms per sample, min of 5 forwards of a batch, mean over folds",
            "batch": cfg.latency_batch,
            "threads": LATENCY_THREADS,
            "workers": workers,  # > 1: measured while the other workers ran
            "machine": machine(),
        },
        "protocol": tcfg.protocol,
        "folds": len(recs),
        "before": {
            "params": mean("params", "before"),
            "flops": mean("flops", "before"),
            "latency_ms_per_sample": mean("latency_ms_per_sample", "before"),
            **({"uf1": before_m["scores"]["all"]["uf1"], "uar": before_m["scores"]["all"]["uar"]} if before_m else {}),
        },
        "after": {
            "params": mean("params", "after"),
            "flops": mean("flops", "after"),
            "latency_ms_per_sample": mean("latency_ms_per_sample", "after"),
            "uf1": metrics["scores"]["all"]["uf1"],
            "uar": metrics["scores"]["all"]["uar"],
        },
        "per_fold": [
            {
                "fold": r["fold"],
                "removed": r["removed"],
                "converted": r["converted"],
                "set_te": r["selection"]["set_te"],
                "layer_te": r["selection"]["layer_te"],
                "before": r["before"],
                "after": r["after"],
            }
            for r in recs
        ],
        "ranking_agreement": ranking_agreement([r["selection"]["layer_te"] for r in recs], cfg.criterion),
        "selection_agreement": selection_agreement([r["removed"] for r in recs]),
    }
    atomic_write_json(out / "esaat.json", summary)
    metrics["esaat"] = {k: summary[k] for k in ("before", "after", "ranking_agreement", "selection_agreement")}
    atomic_write_json(out / "metrics.json", metrics)
    from mer.esaat.plots import plot_transfer_entropy

    plot_transfer_entropy(summary, out / "transfer_entropy.png")
    atomic_write_text(out / "summary.md", format_summary(summary) + "\n\n" + (out / "summary.md").read_text())
    return summary


def format_summary(s: dict) -> str:
    """Markdown: before/after table and the agreement lines."""
    b, a = s["before"], s["after"]
    pct = lambda new, old: f"{100 * (new - old) / old:+.1f}%"  # noqa: E731
    lines = [
        f"**ESAAT {s['config'].get('remove')!s} removed / budget {s['config'].get('budget')} / flops budget "
        f"{s['config'].get('flops_budget')} on {s['model']} ({s['protocol']}, {s['folds']} folds; means over "
        "folds)**",
        "",
        f"| | params | MFLOPs | CPU ms/sample ({LATENCY_THREADS} thread) | UF1 | UAR |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("before", b), ("after", a)):
        uf1 = f"{r['uf1']:.4f}" if "uf1" in r else "-"
        uar = f"{r['uar']:.4f}" if "uar" in r else "-"
        lines.append(
            f"| {name} | {r['params']:,.0f} | {r['flops'] / 1e6:.2f} | {r['latency_ms_per_sample']:.3f} | "
            f"{uf1} | {uar} |"
        )
    lines.append(
        f"| change | {pct(a['params'], b['params'])} | {pct(a['flops'], b['flops'])} | "
        f"{pct(a['latency_ms_per_sample'], b['latency_ms_per_sample'])} | | |"
    )
    ra, sa = s["ranking_agreement"], s["selection_agreement"]
    lines += [
        "",
        f"Ranking agreement across folds: mean pairwise Spearman {ra['spearman_mean']:.3f}, Kendall's W "
        f"{ra['kendall_w']:.3f}. Removed per fold: "
        + "; ".join(f"{f['fold']}: {', '.join(f['removed']) or '-'}" for f in s["per_fold"])
        + f". Same set in {sa['modal_share']:.0%} of folds.",
    ]
    aug = s.get("augment", {})
    if aug.get("kind", "none") != "none":
        lines += [
            "",
            f"Fine-tuning set: {aug['n_real_mean']:.0f} real + {aug['n_generated_mean']:.0f} {aug['kind'].upper()} "
            f"samples per fold on average (ratio {aug['ratio']}; one DDPM per fold on its fit samples; class "
            "weights from the real samples).",
        ]
    return "\n".join(lines)

"""Several folds in one step: their parameters stacked on a leading fold axis, one vmapped forward/backward.

    results = train_folds_batched(tasks)          # what [train_fold(t) for t in tasks] returns and writes

Each fold keeps everything it has when trained alone (``mer.train.loop``): its initialisation
(``torch.manual_seed(task.seed)``), normalisation, class weights, minibatch order (``epoch_order``), Adam
moments and step count, epoch selection, checkpoint (``last.pt``, the same format, so either path resumes
the other's) and output files. Only the arithmetic is shared: ``torch.func.functional_call`` on the
stacked parameters under ``torch.func.vmap`` runs every fold's minibatch (F, B, 3, S, S) at once, the
per-fold losses are summed (each fold's gradient is its own loss's) and ``StackedAdam`` updates each fold
with its own step count. Minibatches of unequal size are padded with zero-weight rows; a fold with no
minibatch left in a step, or whose training has ended, is not updated. The selection scores (validation
or oracle) are computed for all folds in one vmapped forward, and the best epoch's weights are kept as
stacked slices, so nothing is copied per fold per epoch (what makes the release's 140 M-parameter model
trainable 17 folds at a time on a GPU: scripts/gpu_release_loso.py). The test predictions at the end
come the same way, one vmapped forward per weight set; a fold's own model is filled in only to be saved.

Equivalence: without dropout the result equals one fold at a time up to float rounding (the batched
matrix products sum in another order; tests/mer/train/test_train_batched.py). Dropout masks are drawn
for all folds at once (``randomness='different'``), so with dropout > 0 the draws differ from the
one-at-a-time path (same distribution).

Resuming: each fold restores its ``last.pt`` through ``load_resume_point`` (mer.train.recovery: a damaged
file falls back to ``last.prev.pt``, else to a fresh start, named in a warning), and the shared dropout
stream goes on from the first resumed fold's checkpoint RNG; a finished fold's ``last.pt`` and
``last.prev.pt`` are removed. A killed run that reruns therefore ends with the undisturbed run's
predictions, exactly; after a fall-back that leaves one fold an epoch behind the others, up to float
rounding without dropout (and with other dropout draws with it).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from mer.labels import NUM_CLASSES
from mer.train.inputs import scores
from mer.train.loop import (
    FoldTask,
    checkpoint_due,
    end_epoch,
    epoch_order,
    fold_class_weights,
    load_resume_point,
    numerics,
    prepare_fold,
    save_resume_point,
    select_epoch,
    write_fold,
)
from mer.train.models import build_model
from mer.train.recovery import discard_checkpoints

Tensor = torch.Tensor


class StackedAdam:
    """torch.optim.Adam (L2 weight decay, no amsgrad) on parameters stacked over F folds, each fold with its
    own step count; ``step(active)`` updates only the folds where ``active`` (F,) is True.

    params: {name: (F, ...) leaf tensor}; exp_avg/exp_avg_sq: the same shapes; steps: (F,) int64.
    The arithmetic is torch.optim.Adam's single-tensor update (the reference the tests compare against).
    While every fold steps together (the usual case) one torch.optim.Adam over the stacked tensors does the
    update (``fused``: its single-pass implementation, the default on CUDA, where the optimizer's memory
    traffic is a large part of a step at the release's size; else foreach); the masked path takes over for
    good once a fold skips a step.
    """

    def __init__(
        self,
        params: dict[str, Tensor],
        lr: float,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fused: bool | None = None,
        flipped: frozenset[str] = frozenset(),
    ):
        self.params, self.lr, self.betas, self.eps, self.weight_decay = params, lr, betas, eps, weight_decay
        self.flipped = flipped  # names stored transposed (see linear_weights): fold_state gives the model's layout
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.int64)
        self.fused = first.is_cuda if fused is None else fused
        self._torch = torch.optim.Adam(
            list(params.values()), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=self.fused or None
        )
        self._torch_step = -1  # the step count torch's Adam state was last left at (-1: not built)

    @torch.no_grad()
    def step(self, active: Tensor) -> None:
        active = active.cpu()
        if bool(active.all()) and bool((self.steps == self.steps[0]).all()):
            return self._step_together()
        b1, b2 = self.betas
        self.steps += active.to(torch.int64)
        t = self.steps.clamp(min=1).to(torch.float64)
        device = next(iter(self.params.values())).device
        step_size = (self.lr / (1 - b1**t)).to(torch.float32).to(device)  # Adam's python floats, per fold
        bc2_sqrt = torch.sqrt(1 - b2**t).to(torch.float32).to(device)
        on_all = active.to(device)
        for k, p in self.params.items():
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            on = on_all.view(shape)
            g = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            m = torch.where(on, self.exp_avg[k].lerp(g, 1 - b1), self.exp_avg[k])
            v = torch.where(on, self.exp_avg_sq[k].mul(b2).addcmul(g, g, value=1 - b2), self.exp_avg_sq[k])
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(self.eps)
            p.copy_(torch.where(on, p.addcmul(m / denom, step_size.view(shape), value=-1.0), p))
            self.exp_avg[k].copy_(m)
            self.exp_avg_sq[k].copy_(v)

    def _step_together(self) -> None:
        """Every fold at the same step count: torch's own Adam on the stacked tensors (same update). Its state
        shares our moment tensors; it is (re)built only when our step count moved without it (the first
        call, a resume), so a step costs no host-to-device copies."""
        step = int(self.steps[0])
        if self._torch_step != step:
            for k, p in self.params.items():
                self._torch.state[p] = {
                    "step": torch.tensor(float(step), device=p.device if self.fused else "cpu"),
                    "exp_avg": self.exp_avg[k],
                    "exp_avg_sq": self.exp_avg_sq[k],
                }
        self._torch.step()
        self.steps += 1
        self._torch_step = step + 1

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    # --- one fold's state, in torch.optim.Adam's format (checkpoints are shared with the serial path) ------
    def fold_state(self, f: int, names: list[str]) -> dict:
        """{param index: {"step", "exp_avg", "exp_avg_sq"}} of fold f (CPU), params ordered as ``names``."""
        if int(self.steps[f]) == 0:
            return {}
        return {
            i: {
                "step": torch.tensor(float(self.steps[f])),
                "exp_avg": _to_cpu(_fold(self.exp_avg, n, f, self.flipped)),
                "exp_avg_sq": _to_cpu(_fold(self.exp_avg_sq, n, f, self.flipped)),
            }
            for i, n in enumerate(names)
        }

    def load_fold_state(self, f: int, names: list[str], state: dict) -> None:
        if not state:
            return
        for i, n in enumerate(names):
            _fold(self.exp_avg, n, f, self.flipped).copy_(state[i]["exp_avg"])
            _fold(self.exp_avg_sq, n, f, self.flipped).copy_(state[i]["exp_avg_sq"])
        self.steps[f] = int(state[0]["step"])


def cross_entropy_rows(logits: Tensor, y: Tensor, valid: Tensor, weight: Tensor | None, smoothing: float) -> Tensor:
    """F.cross_entropy(logits[valid], y[valid], weight, label_smoothing=smoothing) (mean reduction) computed
    on padded rows: logits (B, K), y (B,) int64, valid (B,) float 0/1; weight (K,) or None. 0 when no row
    is valid. vmap-able over a leading fold axis."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(1, y[:, None])[:, 0]
    w = (weight[y] if weight is not None else torch.ones_like(nll)) * valid
    loss = (w * nll).sum()
    if smoothing:
        per_class = -(logp * weight).sum(-1) if weight is not None else -logp.sum(-1)
        loss = (1 - smoothing) * loss + smoothing * (valid * per_class).sum() / logits.shape[-1]
    return loss / w.sum().clamp(min=torch.finfo(logits.dtype).tiny)


def _pad(rows: list[Tensor], width: int | None = None) -> tuple[Tensor, Tensor]:
    """Stack per-fold row sets (n_f, ...) into (F, width, ...) with zero rows, and the (F, width) 0/1 mask."""
    width = max(len(r) for r in rows) if width is None else width
    out = rows[0].new_zeros((len(rows), width) + tuple(rows[0].shape[1:]))
    valid = torch.zeros((len(rows), width), device=rows[0].device)
    for f, r in enumerate(rows):
        out[f, : len(r)] = r
        valid[f, : len(r)] = 1.0
    return out, valid


def train_folds_batched(
    tasks: list[FoldTask], *, progress: bool = True, position: int = 0, on_epoch_end=None
) -> list[dict]:
    """Train the folds of ``tasks`` together (same cfg); writes each fold's files like ``train_fold`` and
    returns their result dicts in ``tasks`` order. on_epoch_end(task, state) after each fold's epoch."""
    from tqdm.auto import tqdm

    cfg = tasks[0].cfg
    if any(t.cfg != cfg for t in tasks):
        raise ValueError("train_folds_batched: every task must have the same config")
    t0, c0 = time.perf_counter(), time.process_time()
    n_f, dev = len(tasks), torch.device(cfg.device)
    datas = [prepare_fold(t) for t in tasks]
    with numerics(cfg):
        models, states, adam_states, rng = [], [], [], None
        for t in tasks:  # each fold's own initialisation and resume point, exactly as train_fold
            Path(t.fold_dir).mkdir(parents=True, exist_ok=True)
            torch.manual_seed(t.seed)
            m = build_model(cfg.model, cfg.model_kwargs, image_size=t.x.shape[-1])
            o = torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            states.append(load_resume_point(Path(t.fold_dir) / "last.pt", m, o))
            if states[-1].epoch > 0 and rng is None:  # the checkpoint's RNG: the dropout stream goes on from it
                rng = torch.get_rng_state()
            adam_states.append([o.state[p] for p in m.parameters()] if o.state else [])
            models.append(m)
        names = [n for n, _ in models[0].named_parameters()]
        flipped = linear_weights(models[0])
        params, buffers = stack_module_state(models)
        params = {
            k: (v.mT if k in flipped else v).to(dev).contiguous().detach().requires_grad_() for k, v in params.items()
        }
        buffers = {k: v.to(dev) for k, v in buffers.items()}
        base = copy.deepcopy(models[0]).to("meta")
        adam = StackedAdam(params, cfg.lr, weight_decay=cfg.weight_decay, flipped=flipped)
        for f, st in enumerate(adam_states):
            adam.load_fold_state(f, names, dict(enumerate(st)))
        best = {k: p.detach().clone() for k, p in params.items()} if cfg.selection != "fixed" else None
        for f, st in enumerate(states):
            if st.best is not None and best is not None:
                for k in names:
                    _fold(best, k, f, flipped).copy_(st.best["state_dict"][k])
        if rng is not None:
            torch.set_rng_state(rng)
        else:
            torch.manual_seed(tasks[0].seed)

        run = stacked_forward(base, flipped)
        loss_fn = vmap(cross_entropy_rows, in_dims=(0, 0, 0, 0, None))
        xs = [torch.from_numpy(d.x_fit).to(dev) for d in datas]
        ys = [torch.from_numpy(d.y_fit).to(dev) for d in datas]
        w = [fold_class_weights(d, cfg) for d in datas]
        weights = torch.stack([v if v is not None else torch.ones(3) for v in w]).to(dev)
        sel_x = [d.x_val if d.x_val is not None else d.x_sel for d in datas]
        sel_x = _pad([torch.from_numpy(x) for x in sel_x])[0].to(dev) if best is not None else None
        bs = cfg.batch_size
        bar = tqdm(
            total=sum(cfg.epochs - s.epoch for s in states),
            desc=f"folds {tasks[0].index}-{tasks[-1].index} (x{n_f})",
            unit="fold-epoch",
            leave=False,
            position=position,
            disable=not progress,
        )
        while True:
            on = [s.epoch < cfg.epochs and not s.stopped for s in states]
            if not any(on):
                break
            te = time.perf_counter()
            orders = [
                torch.from_numpy(epoch_order(d.y_fit, cfg, (cfg.seed, t.index), s.epoch)).to(dev) if a else None
                for d, t, s, a in zip(datas, tasks, states, on, strict=True)
            ]
            n_steps = max(math.ceil(len(ys[f]) / bs) for f in range(n_f) if on[f])
            tot_loss, correct = torch.zeros(n_f, device=dev), torch.zeros(n_f, device=dev)
            base.train()
            for s in range(n_steps):
                idx = [o[s * bs : (s + 1) * bs] if o is not None else o for o in orders]
                xb, valid = _pad([xs[f][i] if i is not None else xs[f][:0] for f, i in enumerate(idx)])
                yb, _ = _pad([ys[f][i] if i is not None else ys[f][:0] for f, i in enumerate(idx)], xb.shape[1])
                logits = run(params, buffers, xb)  # (F, B, K)
                losses = loss_fn(logits, yb, valid, weights, cfg.label_smoothing)
                adam.zero_grad()
                losses.sum().backward()
                adam.step(torch.tensor([i is not None and len(i) > 0 for i in idx]))  # on the host: no sync
                with torch.no_grad():
                    tot_loss += losses.detach() * valid.sum(1)
                    correct += ((logits.argmax(-1) == yb).float() * valid).sum(1)
            sel_prob = None
            if best is not None:
                base.eval()
                with torch.no_grad():
                    sel_prob = F.softmax(run(params, buffers, sel_x), dim=-1).cpu().numpy()
            seconds = (time.perf_counter() - te) / sum(on)
            tot_loss, correct = tot_loss.cpu().tolist(), correct.cpu().tolist()
            for f, (t, d, st) in enumerate(zip(tasks, datas, states, strict=True)):
                if not on[f]:
                    continue
                st.epoch += 1
                n = len(d.y_fit)
                rec = {"epoch": st.epoch, "train_loss": tot_loss[f] / n, "train_acc": correct[f] / n}
                score = None
                if sel_prob is not None:
                    y_sel = d.y_val if d.x_val is not None else d.y_sel
                    v = scores(y_sel, sel_prob[f, : len(y_sel)])
                    prefix = "val_" if d.x_val is not None else "oracle_test_"
                    rec.update({prefix + k: x for k, x in v.items()})
                    score = (v["uf1"], -v["loss"]) if d.x_val is not None else (v["acc"],)
                rec["seconds"] = round(seconds, 3)
                if end_epoch(st, rec, score, cfg):
                    for k in names:
                        best[k][f].copy_(params[k][f].detach())
                if checkpoint_due(st, cfg):
                    _checkpoint(t, models[f], params, best, adam, f, names, st, flipped)
                if on_epoch_end is not None:
                    on_epoch_end(t, st)
            bar.update(sum(on))
        bar.close()
        results, wall, cpu = [], time.perf_counter() - t0, time.process_time() - c0
        # every fold's test predictions in one vmapped forward per weight set (last epoch, selected epoch);
        # a fold's own model is filled in only when it is saved
        x_test = _pad([torch.from_numpy(d.x_test) for d in datas])[0]
        need_last = cfg.selection == "oracle-release" or any(st.best is None for st in states)
        prob_last = _predict_stacked(run, base, params, buffers, x_test, dev) if need_last else None
        prob_best = _predict_stacked(run, base, best, buffers, x_test, dev) if best is not None else None
        for f, (t, d, st) in enumerate(zip(tasks, datas, states, strict=True)):
            n = len(d.x_test)
            if cfg.save_models:
                _unstack(params, f, models[f], flipped)
                if st.best is not None:
                    st.best["state_dict"] = _fold_state_dict(best, f, models[f], flipped)
                chosen = select_epoch(models[f], st)
            else:
                chosen = int(st.best["epoch"]) if st.best is not None else st.epoch
            prob = prob_best[f, :n] if st.best is not None else prob_last[f, :n]
            last = prob_last[f, :n] if cfg.selection == "oracle-release" else None
            results.append(
                write_fold(t, d, models[f], st, chosen, prob, seconds=wall / n_f, cpu_seconds=cpu / n_f, prob_last=last)
            )
            discard_checkpoints(Path(t.fold_dir) / "last.pt")  # last.pt and last.prev.pt
    return results


@torch.no_grad()
def _predict_stacked(run, base, params: dict[str, Tensor], buffers, x: Tensor, dev, batch: int = 256) -> np.ndarray:
    """(F, N, K) softmax probabilities of the padded inputs x (F, N, ...) under each fold's stacked weights,
    ``base`` in eval mode: what ``predict_proba`` gives for each fold's own model, up to float rounding."""
    base.eval()
    out = [
        F.softmax(run(params, buffers, x[:, i : i + batch].to(dev)), dim=-1).cpu() for i in range(0, x.shape[1], batch)
    ]
    return torch.cat(out, dim=1).numpy() if out else np.zeros((x.shape[0], 0, NUM_CLASSES), np.float32)


def stacked_forward(base, flipped: frozenset[str]):
    """``run(params, buffers, x)``: ``base``'s forward for every fold at once, (F, B, ...) -> (F, B, K), with
    params as the stack holds them (the ``flipped`` names transposed, see ``linear_weights``). Dropout
    draws differ per fold (randomness='different')."""

    def forward(p, b, x):  # one fold's slices; Linear weights back to (out, in) as views
        return functional_call(base, ({k: v.mT if k in flipped else v for k, v in p.items()}, b), (x,))

    return vmap(forward, randomness="different")


def linear_weights(model) -> frozenset[str]:
    """The names of ``model``'s nn.Linear weights. The stacked tensors hold them transposed, (F, in, out):
    under vmap a Linear with per-fold weights is x @ Wᵀ, whose weight gradient comes out in that layout, so
    stored as (F, out, in) every weight gradient would be copied into the parameter's layout each step (57
    copies, 27 GB a step at the release's size: scripts/batched_step_traffic.py). ``_fold`` gives a fold's
    slice back in the model's layout."""
    return frozenset(f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Linear))


def _fold(stacked: dict[str, Tensor], name: str, f: int, flipped: frozenset[str]) -> Tensor:
    """Fold f's slice of ``stacked[name]`` in the model's layout (a view: writes go to the stack)."""
    v = stacked[name][f]
    return v.mT if name in flipped else v


def _to_cpu(t: Tensor) -> Tensor:
    """A contiguous CPU copy (never a view of the stack, also when the stack is on the CPU)."""
    return t.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)


def _unstack(params: dict[str, Tensor], f: int, model, flipped: frozenset[str]) -> None:
    """Copy fold f's slice of the stacked parameters into ``model`` (on the CPU)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(_fold(params, n, f, flipped))


def _fold_state_dict(stacked: dict[str, Tensor], f: int, model, flipped: frozenset[str]) -> dict:
    """Fold f's state_dict (CPU) with the parameters taken from ``stacked`` slices."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for k in stacked:
        sd[k] = _to_cpu(_fold(stacked, k, f, flipped))
    return sd


def _checkpoint(
    task: FoldTask, model, params, best, adam: StackedAdam, f: int, names: list[str], state, flipped: frozenset[str]
) -> None:
    """last.pt of fold f in the serial path's format (model, torch.optim.Adam state, RNG, history, best)."""
    _unstack(params, f, model, flipped)
    if state.best is not None:
        state.best["state_dict"] = _fold_state_dict(best, f, model, flipped)
    opt = torch.optim.Adam(model.parameters(), lr=adam.lr, weight_decay=adam.weight_decay)
    by_index = adam.fold_state(f, names)
    for i, p in enumerate(model.parameters()):
        if i in by_index:
            opt.state[p] = by_index[i]
    save_resume_point(Path(task.fold_dir) / "last.pt", model, opt, state)
    if state.best is not None:
        state.best["state_dict"] = None  # the stacked slices stay the live copy

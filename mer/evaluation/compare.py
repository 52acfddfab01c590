"""Is model A better than model B on the same subjects? A paired bootstrap over subjects of pooled UF1/UAR.

    a = [load_predictions(p) for p in ("runs/lape-s0", "runs/lape-s1")]   # run folders or predictions CSVs
    b = [load_predictions("runs/floor/predictions.csv")]
    res = compare(a, b, n_boot=2000, seed=0)
    print(format_comparison(res))

Leave-one-subject-out scores pool every held-out prediction, but the independent units are the subjects,
not the clips (a subject's clips share a face, a camera, a session and a coder). So the uncertainty of a
difference between two models scored on the same subjects comes from resampling subjects: each bootstrap
draw takes, within each database, as many of its subjects as it has, with replacement (the composite's
database mix stays fixed), pools each run's predictions on the drawn subjects and scores them exactly as
``mer.metrics`` does (all three classes count). A side with several runs (seeds) scores as the mean of its
runs on the same draw; by default each draw also resamples each side's runs with replacement
(``runs="resample"``: a two-level bootstrap, subjects and seeds), so that the interval holds the
uncertainty of which seeds were trained as well as which subjects were recorded. ``runs="paired"``
resamples the same run indices on both sides (seed s of A made from seed s of B, e.g. a pruned model and
the model it was pruned from: equal run counts, matched by order); ``runs="fixed"`` keeps the runs given
(the interval is then conditional on those seeds). A side with a single run contributes no seed
variation: its interval is the subjects' alone, and the report says so. Reported: each side's
observed score, the difference A - B, its 95 % percentile interval, and the share of draws in which A does
not beat B. Pairing: every run must hold the same subjects with the same label counts (the same held-out
samples), or the comparison is refused with the subject named; ``common=True`` scores every run on the
subjects all of them hold instead (a partial run against a complete one), and says so. A run trained in
parts (``--folds`` slices in separate folders) is joined into one with ``join_parts`` (disjoint subjects).

A ``mer train`` run folder gives its selected predictions; for a run whose selection looked at the test
subjects (``--selection oracle-release``) its last-epoch predictions are used instead, the honest estimate of
the same training (``which="selected"`` keeps the oracle's). A predictions CSV (``mer train``'s, or the
linear floor's, ``python -m mer.baselines.linear``) needs the columns dataset, subject, label, pred; a CSV
that holds several runs (the floor's input / protocol / seed columns) must hold one LOSO run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

NEED = ("dataset", "subject", "label", "pred")


@dataclass
class Predictions:
    """One run's out-of-fold predictions: parallel arrays, and where they came from."""

    name: str
    selection: str
    dataset: np.ndarray
    subject: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    notes: list[str] = field(default_factory=list)
    seed: int | None = None  # the training seed, where the run says (metrics.json, a CSV's seed column)


def read_prediction_csv(path) -> list[dict]:
    """The rows of a predictions CSV (``mer train``'s or the linear floor's) as dicts; refuses a file without
    the columns dataset, subject, label, pred."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in NEED):
        raise ValueError(f"{path}: not a predictions.csv (needs the columns {', '.join(NEED)})")
    return rows


def last_epoch_rows(run) -> list[dict] | None:
    """The last-epoch predictions of a ``mer train`` run folder (its folds' predictions_last_epoch.csv, saved
    under --selection oracle-release), or None unless every finished fold saved them."""
    run = Path(run)
    last = sorted(run.glob("folds/*/predictions_last_epoch.csv"))
    if not last or len(last) != len(list(run.glob("folds/*/result.json"))):
        return None
    return [r for p in last for r in read_prediction_csv(p)]


def load_predictions(path, which: str = "honest") -> Predictions:
    """The predictions of a ``mer train`` run folder or a predictions CSV (see the module docstring).
    which: "honest" (an oracle run's last epoch, any other run's selection) or "selected"."""
    if which not in ("honest", "selected"):
        raise ValueError(f"which={which!r}: honest or selected")
    path = Path(path)
    notes: list[str] = []
    if path.is_dir():
        if not (path / "predictions.csv").is_file() or not (path / "metrics.json").is_file():
            raise ValueError(f"{path}: not a finished `mer train` run (no predictions.csv / metrics.json)")
        metrics = json.loads((path / "metrics.json").read_text())
        seed = metrics.get("seed")
        if metrics.get("folds_finished", 0) < metrics.get("folds", 0):
            notes.append(f"{path}: PARTIAL, {metrics['folds_finished']} of {metrics['folds']} folds")
        selection = str(metrics.get("selection", "?"))
        oracle = bool(metrics.get("oracle")) or metrics.get("valid_estimate") is False
        if oracle and which == "honest":
            rows = last_epoch_rows(path)
            if rows is None:
                raise ValueError(
                    f"{path}: its selection looked at the test subjects ({selection}) and its folds did not save "
                    "their last-epoch predictions; compare its oracle selection with which='selected' "
                    "(`mer compare --which selected`) or retrain"
                )
            selection = metrics.get("last_epoch", {}).get("selection", "last epoch")
            notes.append(f"{path}: oracle run, compared at its last epoch (the honest estimate of its training)")
        else:
            rows = read_prediction_csv(path / "predictions.csv")
    elif path.is_file():
        rows = read_prediction_csv(path)
        selection = "as written"
        runs = {tuple(r.get(k, "") for k in ("input", "protocol", "seed")) for r in rows}
        if len(runs) > 1:
            listed = "; ".join(f"input={i} protocol={p} seed={s}" for i, p, s in sorted(runs))
            raise ValueError(f"{path}: holds {len(runs)} runs ({listed}); write one run per file")
        (i, p, s) = next(iter(runs))
        seed = int(s) if str(s).strip().lstrip("-").isdigit() else None
        if p and p != "loso":
            raise ValueError(f"{path}: a {p} run; the comparison is over LOSO subjects")
        if i or s:
            selection = f"input={i} seed={s}"
    else:
        raise ValueError(f"{path}: no such run folder or predictions CSV")
    return Predictions(
        name=str(path),
        selection=selection,
        dataset=np.array([r["dataset"] for r in rows]),
        subject=np.array([f"{r['dataset']}/{r['subject']}" for r in rows]),
        label=np.array([int(r["label"]) for r in rows]),
        pred=np.array([int(r["pred"]) for r in rows]),
        notes=notes,
        seed=seed if isinstance(seed, int) else None,
    )


def join_parts(parts: list[Predictions]) -> Predictions:
    """One run from the parts it was trained in (``--folds`` slices written to separate folders): their rows
    together. Parts of one run hold disjoint subjects; parts that share one are refused (seeds of the same
    model go in as separate runs instead)."""
    if len(parts) == 1:
        return parts[0]
    owner: dict[str, str] = {}
    for p in parts:
        for subj in sorted(set(p.subject)):
            if subj in owner:
                raise ValueError(
                    f"{p.name} and {owner[subj]} both hold subject {subj}: the parts of one run hold disjoint "
                    "subjects (give seeds of a model as separate runs, not joined with +)"
                )
            owner[subj] = p.name
    selections = sorted({p.selection for p in parts})
    return Predictions(
        name="+".join(p.name for p in parts),
        selection=selections[0] if len(selections) == 1 else "; ".join(selections),
        dataset=np.concatenate([p.dataset for p in parts]),
        subject=np.concatenate([p.subject for p in parts]),
        label=np.concatenate([p.label for p in parts]),
        pred=np.concatenate([p.pred for p in parts]),
        notes=[n for p in parts for n in p.notes]
        + [f"{' + '.join(p.name for p in parts)}: {len(parts)} parts of one run, {len(owner)} subjects"],
        seed=parts[0].seed if len({p.seed for p in parts}) == 1 else None,
    )


def common_subjects(runs: list[Predictions]) -> list[Predictions]:
    """Every run restricted to the subjects all of them hold (e.g. a partial run against a complete one),
    with a note on each run that lost subjects; refuses runs that share none."""
    common = set.intersection(*(set(r.subject) for r in runs))
    if not common:
        raise ValueError("the runs hold no subject in common: " + "; ".join(r.name for r in runs))
    out = []
    for r in runs:
        keep = np.isin(r.subject, sorted(common))
        notes = list(r.notes)
        if not keep.all():
            notes.append(
                f"{r.name}: scored on the {len(common)} subjects every run holds "
                f"({keep.sum()} of its {len(keep)} samples, {len(set(r.subject))} subjects)"
            )
        out.append(
            replace(
                r, dataset=r.dataset[keep], subject=r.subject[keep], label=r.label[keep], pred=r.pred[keep], notes=notes
            )
        )
    return out


def _subject_confusions(p: Predictions, subjects: list[str], k: int = 3) -> np.ndarray:
    """(S, k, k) confusion counts of each subject's predictions."""
    index = {s: i for i, s in enumerate(subjects)}
    cm = np.zeros((len(subjects), k, k), np.int64)
    np.add.at(cm, ([index[s] for s in p.subject], p.label, p.pred), 1)
    return cm


def scores_from_confusions(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(UF1, UAR) of each (..., k, k) confusion matrix: ``mer.metrics.uf1_uar_from_confusion``, vectorised."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fn, fp = cm.sum(-1) - tp, cm.sum(-2) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
    return f1.mean(-1), recall.mean(-1)


def _check_paired(runs: list[Predictions]) -> list[str]:
    """The subjects every run holds (sorted); refuses runs that do not hold the same samples."""
    first = runs[0]
    subjects = sorted(set(first.subject))
    want = {s: np.bincount(first.label[first.subject == s], minlength=3).tolist() for s in subjects}
    for r in runs[1:]:
        have = set(r.subject)
        if have != set(subjects):
            extra, missing = sorted(have - set(subjects)), sorted(set(subjects) - have)
            raise ValueError(
                f"{r.name} and {first.name} hold different subjects "
                f"(only in the first: {missing[:5] or 'none'}; only in the second: {extra[:5] or 'none'})"
            )
        for s in subjects:
            got = np.bincount(r.label[r.subject == s], minlength=3).tolist()
            if got != want[s]:
                raise ValueError(
                    f"subject {s}: {r.name} has label counts {got}, {first.name} {want[s]}: not the same held-out "
                    "samples (another sample list, or samples excluded in one run)"
                )
    return subjects


RUN_MODES = ("resample", "paired", "fixed")


def _draw_counts(rng, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n): how often each of n items is drawn when n are drawn with replacement, per bootstrap draw."""
    return rng.multinomial(n, np.full(n, 1 / n), size=n_boot)


def _run_weights(rng, n_boot: int, n_a: int, n_b: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per draw, how often each run of A and of B is drawn, as (n_boot, n) weights summing to 1 per draw."""
    if mode == "fixed":
        return np.full((n_boot, n_a), 1 / n_a), np.full((n_boot, n_b), 1 / n_b)
    count_a = _draw_counts(rng, n_a, n_boot)
    count_b = count_a if mode == "paired" else _draw_counts(rng, n_b, n_boot)
    return count_a / n_a, count_b / n_b


def compare(
    a: list[Predictions],
    b: list[Predictions],
    n_boot: int = 2000,
    seed: int = 0,
    *,
    common: bool = False,
    runs: str = "resample",
) -> dict:
    """Paired subject bootstrap of A - B (UF1 and UAR; overall and per database). See the module docstring.
    common: score every run on the subjects all of them hold (``common_subjects``) instead of refusing
    runs that hold different ones. runs: how each side's runs (seeds) enter a draw: resample, paired, fixed."""
    if not a or not b:
        raise ValueError("give at least one run on each side")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: use at least 100 draws (2000 for a 95 % interval)")
    if runs not in RUN_MODES:
        raise ValueError(f"runs={runs!r}: one of {', '.join(RUN_MODES)}")
    if runs == "paired":
        if len(a) != len(b):
            raise ValueError(
                f"runs='paired' matches run i of A with run i of B, but A has {len(a)} runs and B {len(b)}; give "
                "the same seeds on both sides in the same order, or resample them independently"
            )
        seeds_a, seeds_b = [r.seed for r in a], [r.seed for r in b]
        if None not in seeds_a + seeds_b and seeds_a != seeds_b:
            raise ValueError(
                f"runs='paired' matches run i of A with run i of B, but their seeds differ: A {seeds_a}, "
                f"B {seeds_b}; give both sides' runs in the same seed order"
            )
    every = common_subjects([*a, *b]) if common else [*a, *b]
    a, b = every[: len(a)], every[len(a) :]
    subjects = _check_paired(every)
    cms = np.stack([_subject_confusions(r, subjects) for r in every])  # (R, S, 3, 3)
    db = np.array([s.split("/", 1)[0] for s in subjects])
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, len(subjects)))
    for d in sorted(set(db)):  # within each database: as many subjects as it has, with replacement
        idx = np.flatnonzero(db == d)
        weights[:, idx] = _draw_counts(rng, len(idx), n_boot)
    run_a, run_b = _run_weights(rng, n_boot, len(a), len(b), runs)  # after the subjects: "fixed" draws as before
    sets = {"all": np.ones(len(subjects), bool)} | {d: db == d for d in sorted(set(db))}
    out = {
        "a": [{"name": r.name, "selection": r.selection, "seed": r.seed} for r in a],
        "b": [{"name": r.name, "selection": r.selection, "seed": r.seed} for r in b],
        "notes": [n for r in every for n in r.notes]
        + [
            f"side {k} is one run: the interval holds no seed-to-seed variation of it"
            for k, side in (("A", a), ("B", b))
            if len(side) == 1 and runs != "fixed"
        ],
        "n_boot": n_boot,
        "seed": seed,
        "runs": runs,
        "subjects": len(subjects),
        "samples": int(cms[0].sum()),
        "sets": {},
    }
    for name, mask in sets.items():
        seen = scores_from_confusions(cms[:, mask].sum(1))  # (UF1, UAR), each (R,)
        drawn = scores_from_confusions(np.einsum("bs,rsij->rbij", weights[:, mask], cms[:, mask]))  # each (R, n_boot)
        entry = {"subjects": int(mask.sum()), "samples": int(cms[0][mask].sum())}
        for m, obs, boot in zip(("uf1", "uar"), seen, drawn, strict=True):
            side_a, side_b = obs[: len(a)].mean(), obs[len(a) :].mean()
            diff = (run_a * boot[: len(a)].T).sum(1) - (run_b * boot[len(a) :].T).sum(1)
            lo, hi = np.percentile(diff, [2.5, 97.5])
            entry[m] = {
                "a": float(side_a),
                "b": float(side_b),
                "a_runs": obs[: len(a)].tolist(),
                "b_runs": obs[len(a) :].tolist(),
                "diff": float(side_a - side_b),
                "ci95": [float(lo), float(hi)],
                "p_a_not_better": float((diff <= 0).mean()),
            }
        out["sets"][name] = entry
    return out


RUN_WORDS = {
    "resample": "its runs resampled with replacement on each draw (seeds and subjects)",
    "paired": "run i of A and run i of B drawn together on each draw (paired seeds)",
    "fixed": "the runs given on every draw (the interval is conditional on these seeds)",
}


def format_comparison(res: dict) -> str:
    """A Markdown table of ``compare``'s result, with what it means in words."""

    def side(runs):
        names = ", ".join(r["name"] for r in runs)
        return f"{names} ({runs[0]['selection']})" if len({r["selection"] for r in runs}) == 1 else names

    lines = [
        f"A: {side(res['a'])}",
        f"B: {side(res['b'])}",
        f"{res['subjects']} subjects, {res['samples']} samples; paired bootstrap over subjects within each "
        f"database, {res['n_boot']} draws (seed {res['seed']}); a side with several runs scores as their mean, "
        + RUN_WORDS[res.get("runs", "fixed")]
        + ".",
        "",
        "| set | subjects | UF1 A | UF1 B | A - B [95 % CI] | P(A not better) | UAR A | UAR B | A - B [95 % CI] |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for name, e in res["sets"].items():
        u, r = e["uf1"], e["uar"]
        lines.append(
            f"| {name} | {e['subjects']} | {u['a']:.4f} | {u['b']:.4f} | {u['diff']:+.4f} "
            f"[{u['ci95'][0]:+.4f}, {u['ci95'][1]:+.4f}] | {u['p_a_not_better']:.3f} | {r['a']:.4f} | {r['b']:.4f} | "
            f"{r['diff']:+.4f} [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] |"
        )
    u = res["sets"]["all"]["uf1"]
    lo, hi = u["ci95"]
    verdict = "A is ahead of B" if lo > 0 else "B is ahead of A" if hi < 0 else "the data do not separate A and B"
    lines += ["", f"Overall UF1: {verdict} (95 % interval of A - B: [{lo:+.4f}, {hi:+.4f}])."]
    lines += [f"Note: {n}" for n in res["notes"]]
    return "\n".join(lines)

"""TrainConfig: every setting of a training/evaluation run, typed, with its default and why.

The resolved config is written to ``RUNDIR/config.json`` and into every checkpoint. A rerun into the same
run directory must resolve to the same *experiment* (every field except the runtime ones listed in
``RUNTIME_FIELDS``): otherwise :class:`ConfigMismatch` (or ``--force`` to start afresh).

Defaults are the ones measured on the 2-core development CPU (docs/training.md gives the numbers).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from mer.options import check_choices, option
from mer.preprocess.config import PrepConfig

#: fields that do not change results (where and how fast it runs, the preset's name: its values are in the
#: other fields); ignored when comparing configs
RUNTIME_FIELDS = ("out", "workers", "progress", "cache_dir", "prep_workers", "preset", "device", "save_models", "folds")

#: renamed fields: old name -> new name (old run directories still load)
LEGACY_FIELDS = {"select": "selection"}
DATASETS = ("casme2", "samm", "smic", "casme3")
SELECTIONS = ("fixed", "val", "oracle-release")
ORACLE_LABEL = "oracle (test-fold selection, not a valid estimate)"
#: named starting points (`--preset`); the options given on the command line override them
PRESETS = {
    "none": {},
    # the public HTNet code (main_HTNet.py): its model, optimiser, batch, budget, loss, batch order, inputs
    "release": dict(
        model="htnet_original",
        lr=5e-5,
        batch_size=256,
        epochs=800,
        weight_decay=0.0,
        class_weights="none",
        label_smoothing=0.0,
        shuffle=False,
        normalize="none",
        input="regions",
    ),
    # the paper's text (Zhang et al. 2025): the release's training + LAPE + per-fold DDPM (cosine schedule,
    # ancestral sampling); ESAAT is the next step, `mer prune --criterion signed` on the trained run
    "paper": dict(
        model="htnet_original",
        model_kwargs={"pos": ("lape+block_scalar", "block_scalar", "block_scalar")},
        lr=5e-5,
        batch_size=256,
        epochs=800,
        weight_decay=0.0,
        class_weights="none",
        label_smoothing=0.0,
        shuffle=False,
        normalize="none",
        input="regions",
        augment="ddpm",
        ddpm={"sampler": "ancestral"},
    ),
}
INPUTS = ("face", "regions")
AUGMENTS = ("none", "ddpm")


def augment_ratio_option(group: str):
    """``--augment-ratio``, shared by `mer train` and `mer prune`."""
    return option(
        "balance", "'balance' (top classes up to the largest) or a multiple of the fit set, e.g. 1.0", group=group
    )


def ddpm_option(group: str):
    """``--ddpm-arg KEY=VALUE``, shared by `mer train` and `mer prune`."""
    return option(
        dict, "mer.augment.DDPMConfig override, repeatable (e.g. train_steps=200)", flag="--ddpm-arg", group=group
    )


def augment_ratio_error(value: str) -> str | None:
    """The message for a bad ``augment_ratio`` ('balance' or a number >= 0), else None."""
    if value == "balance":
        return None
    try:
        ok = float(value) >= 0
    except ValueError:
        ok = False
    return None if ok else f"augment_ratio must be 'balance' or a number >= 0, got {value!r}"


NORMALISATIONS = ("channel", "none")
CLASS_WEIGHTS = ("balanced", "none")


_DATA, _PROTO, _OPT = "data (one source)", "protocol and inputs", "model and optimisation"
_SEL, _AUG, _RUN = "model selection (never on held-out subjects)", "augmentation", "run"


class FoldListError(ValueError):
    """--folds names folds the run does not have."""


def parse_fold_list(spec: str) -> list[int]:
    """'0-16,20' -> [0, 1, ..., 16, 20] (sorted, unique); ValueError naming the bad part."""
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            a, b = 0, -1
        if a < 0 or b < a:
            raise ValueError(f"folds: {part!r} in {spec!r} is not an index or a range lo-hi (e.g. 0-16,20)")
        out.update(range(a, b + 1))
    return sorted(out)


class ConfigMismatch(ValueError):
    """The run directory holds a run with another config."""


@dataclass(frozen=True)
class TrainConfig:
    """A training + evaluation run (one model per fold, pooled UF1/UAR over all folds).

    Data: exactly one source, ``data`` (synthetic folder), the real composite roots, or ``dataset`` +
    ``root``. Each field's option (help, choices, flag) is the `mer train` command line (mer.options);
    docs/training.md gives the measurements.
    """

    # --- data ------------------------------------------------------------------------------------
    data: str | None = option(
        None,
        "a `mer synth` output folder (casme2/, samm/, smic/, megc2019_composite.csv), "
        "or htnet-release:PATH, the MEGC2019 composite as the public HTNet release ships it "
        "(its 442 flow images, tiles and 68 LOSO folds; mer.data.load_htnet_release)",
        group=_DATA,
    )
    casme2: str | None = option(None, "real CASME II root; with --samm and --smic: the MEGC2019 composite", group=_DATA)
    samm: str | None = option(None, "real SAMM root", group=_DATA)
    smic: str | None = option(None, "real SMIC-HS root", group=_DATA)
    dataset: str | None = option(None, "a single dataset (with --root)", choices=DATASETS, group=_DATA)
    root: str | None = option(None, "root folder of --dataset", group=_DATA)
    sample_list: str | None = option(
        None,
        "sample list CSV (composite: dataset,subject,clip,label; casme3); default: the synthetic or the shipped list",
        group=_DATA,
    )
    frames: str = option(
        "auto",
        "the dataset's face crops when present (auto), or raw / cropped frames",
        choices=("auto", "raw", "cropped"),
        group=_DATA,
    )
    on_prep_error: str = option(
        "raise",
        "a sample that cannot be used (a frame missing, truncated or corrupt, "
        "no face found, ...): stop and list them all (raise), or exclude it, listed in "
        "excluded.json / metrics.json / summary.md (warn)",
        choices=("raise", "warn"),
        flag="--on-error",
        group=_DATA,
    )
    missing_apex: str = option(
        "estimate",
        "annotation rows with '/' or a blank apex: the middle frame, flagged "
        "apex_is_estimated and named in a warning (estimate), or a dataset error (error); "
        "not for htnet-release",
        choices=("estimate", "error"),
        group=_DATA,
    )
    errata: str = option(
        "shipped",
        "known annotation errors of the public coding sheets: correct them, announced "
        "and recorded per sample (shipped), leave them (none), or a table CSV of the same form "
        "(docs/data.md); not for htnet-release",
        group=_DATA,
    )
    annotation: str | None = option(
        None, "the annotation file of --dataset (default: found in --root by its usual name)", group=_DATA
    )
    # --- protocol and inputs -----------------------------------------------------------------------
    protocol: str = option(
        "loso",
        "loso | kfold:K (subject-grouped) | cross:train=A,B;test=C | holdout-dataset "
        "(train on all other databases, test on each one in turn: MEGC2018 style)",
        group=_PROTO,
    )
    kfold_seed: int = option(0, "subject assignment of kfold:K", group=_PROTO)
    prep: PrepConfig = option(PrepConfig)  # preprocessing (keys the prep cache); options from `mer prepare`
    input: str = option(
        "regions",
        "the four facial-region windows tiled 2x2 (regions, as HTNet; htnet-release: "
        "the release's tiles) or the whole face (face; htnet-release: the whole 28x28 flow image)",
        choices=INPUTS,
        group=_PROTO,
    )
    normalize: str = option(
        "channel",
        "per-channel (x - mean_c) / std_c with the fold's training statistics "
        "(channel), or none (htnet-release: the raw 0-255 values the release feeds its model)",
        choices=NORMALISATIONS,
        group=_PROTO,
    )
    # --- model and optimisation ------------------------------------------------------------------
    model: str = option("htnet_small_lape_agent", "mer.models name (`mer models`) or module:callable", group=_OPT)
    model_kwargs: dict = option(
        dict, "create_model override, repeatable (VALUE parsed as JSON when possible)", flag="--model-arg", group=_OPT
    )
    epochs: int = option(
        30, "epoch budget (selection fixed, oracle-release) or the maximum (selection val)", group=_OPT
    )
    batch_size: int = option(
        64, "minibatch size (the composite's ~435 training samples: 7 steps per epoch)", group=_OPT
    )
    lr: float = option(1e-3, "Adam learning rate (the released HTNet's 5e-5 needs its 800 epochs)", group=_OPT)
    weight_decay: float = option(0.0, "Adam L2 weight decay", group=_OPT)
    class_weights: str = option(
        "balanced",
        "cross-entropy class weights: n / (K n_c) on the fit set (balanced) or none",
        choices=CLASS_WEIGHTS,
        group=_OPT,
    )
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", group=_OPT)
    shuffle: bool = option(
        True,
        "a fresh random minibatch order every epoch; --no-shuffle: the fit samples in label "
        "order, the same every epoch (the release reads u_train/<label>/ in a DataLoader without "
        "shuffling)",
        group=_OPT,
    )
    fold_batch: int = option(
        1,
        "folds trained together in one step (their parameters stacked, torch.func.vmap; "
        "mer.train.batched): the same arithmetic as one fold at a time, faster for small "
        "models and on GPUs",
        group=_OPT,
    )
    # --- model selection (never on the held-out subjects) ----------------------------------------
    selection: str = option(
        "fixed",
        "fixed: the last epoch of the budget; val: the best epoch on a validation "
        "split of the training subjects (early stopping); oracle-release: the released HTNet's "
        "evaluation, the epoch with the best accuracy on the held-out subject (the latest on "
        "ties), labelled 'oracle (test-fold selection, not a valid estimate)' everywhere",
        choices=SELECTIONS,
        group=_SEL,
    )
    val_fraction: float = option(0.15, "share of the training *subjects* held out for selection val", group=_SEL)
    patience: int = option(10, "selection val: stop after this many epochs without a better validation UF1", group=_SEL)
    # --- augmentation ----------------------------------------------------------------------------
    augment: str = option(
        "none",
        "DDPM augmentation (mer.augment), trained per fold on its training subjects only",
        choices=AUGMENTS,
        group=_AUG,
    )
    augment_ratio: str = augment_ratio_option(_AUG)
    ddpm: dict = ddpm_option(_AUG)
    # --- reproducibility -------------------------------------------------------------------------
    preset: str = option(
        "none",
        "start from a named set of settings, then apply the options given: release (the "
        "public HTNet code: htnet_original, Adam lr 5e-5, batch 256, 800 epochs, plain "
        "cross-entropy, no shuffling, raw inputs), paper (its text: + LAPE, DDPM augmentation; "
        "then `mer prune --criterion signed` for ESAAT); none: the CPU-sized defaults",
        choices=tuple(PRESETS),
        group=_RUN,
    )
    seed: int = option(
        0, "seeds each fold's init (seed * 1000 + fold), data order, validation split, augmentation", group=_RUN
    )
    deterministic: bool = option(True, "torch.use_deterministic_algorithms during training", group=_RUN)
    matmul_precision: str = option(
        "highest",
        "torch.set_float32_matmul_precision during training: highest (plain "
        "fp32), high (CUDA may use TF32: ~8x the fp32 matrix throughput of an H100)",
        choices=("highest", "high", "medium"),
        group=_RUN,
    )
    checkpoint_every: int = option(
        1,
        "epochs between resumable checkpoints (folds/<fold>/last.pt); 0: none (an interrupted fold starts again)",
        group=_RUN,
    )
    save_models: bool = option(
        True,
        "write each fold's model.pt (needed by mer predict / mer prune); off for big "
        "models: the release's htnet_original is 560 MB per fold",
        group=_RUN,
    )
    # --- runtime (not part of the experiment) ----------------------------------------------------
    out: str = option("runs/train", "run directory", required=True, group=_RUN)
    device: str = option(
        "cpu", "where to train: cpu, cuda or cuda:N (the model, its optimiser and each batch)", group=_RUN
    )
    workers: int = option(
        1, "folds in parallel worker processes (each torch.set_num_threads(cores // workers))", group=_RUN
    )
    prep_workers: int = option(0, "preprocessing processes (0: same as --workers)", group=_RUN)
    cache_dir: str = option(
        "~/.cache/mer/prepared",
        "preprocessing cache (keyed by every preprocessing parameter)",
        flag="--cache",
        group=_RUN,
    )
    progress: bool = option(True, "progress bars", group=_RUN)
    folds: str | None = option(
        None,
        "train only these folds (indices as in folds.json: 0-16,20), the others left for a later run "
        "with the same options into the same --out; the report then scores the finished folds (PARTIAL)",
        metavar="LIST",
        group=_RUN,
    )

    def __post_init__(self):
        errs = check_choices(self)
        if self.folds is not None:
            try:
                parse_fold_list(self.folds)
            except ValueError as e:
                errs.append(str(e))
        if self.epochs < 1 or self.batch_size < 1:
            errs.append(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0:
            errs.append(f"lr must be > 0, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            errs.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.patience < 1 or self.checkpoint_every < 0:
            errs.append("patience must be >= 1 and checkpoint_every >= 0")
        if self.workers < 1:
            errs.append(f"workers must be >= 1, got {self.workers}")
        if self.fold_batch < 1:
            errs.append(f"fold_batch must be >= 1, got {self.fold_batch}")
        if (msg := augment_ratio_error(self.augment_ratio)) is not None:
            errs.append(msg)
        sources = [
            self.data is not None,
            any(x is not None for x in (self.casme2, self.samm, self.smic)),
            self.dataset is not None,
        ]
        if sum(sources) > 1:
            errs.append(
                "give one data source: --data DIR (synthetic), or --casme2/--samm/--smic ROOTs, "
                "or --dataset NAME --root ROOT"
            )
        if self.dataset is not None and self.root is None:
            errs.append(f"--dataset {self.dataset} needs --root")
        if self.annotation is not None and self.dataset is None:
            errs.append(
                "--annotation is for a single dataset (--dataset NAME --root ROOT); the composite's "
                "datasets use the annotation files found in their roots"
            )
        if (
            self.data is not None
            and self.data.startswith("htnet-release:")
            and (self.missing_apex != "estimate" or self.errata != "shipped")
        ):
            errs.append(
                "--missing-apex and --errata apply to datasets read from their coding sheets, not to "
                "htnet-release (its sample sheet has an apex for every sample); leave them at their "
                "defaults"
            )
        from mer.train.folds import parse_protocol

        try:
            parse_protocol(self.protocol)
        except ValueError as e:
            errs.append(str(e))
        if errs:
            raise ValueError("invalid TrainConfig: " + "; ".join(errs))

    # -------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str = "none", **overrides) -> TrainConfig:
        """The config of ``preset`` (PRESETS) with ``overrides`` applied on top; records the preset's name."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
        return cls(**{**PRESETS[preset], **overrides, "preset": preset})

    @property
    def selection_label(self) -> str:
        """How the evaluated epoch was chosen, as written in metrics, tables and plot titles."""
        if self.selection == "oracle-release":
            return ORACLE_LABEL
        if self.selection == "val":
            return (
                f"validation: best epoch on {self.val_fraction:.0%} of the training subjects "
                f"(early stopping, patience {self.patience})"
            )
        return f"fixed budget ({self.epochs} epochs, last epoch)"

    @property
    def valid_estimate(self) -> bool:
        """False when the held-out subjects chose the epoch (selection oracle-release)."""
        return self.selection != "oracle-release"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prep"] = self.prep.to_dict()
        return d

    def experiment_dict(self) -> dict:
        """The fields that determine the results (runtime fields removed)."""
        d = self.to_dict()
        for k in RUNTIME_FIELDS:
            d.pop(k, None)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)} | set(LEGACY_FIELDS) | {"reproduce_htnet_oracle"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        d = dict(d)
        for old, new in LEGACY_FIELDS.items():  # config.json of runs written before the rename
            if old in d and new not in d:
                d[new] = d.pop(old)
        if d.pop("reproduce_htnet_oracle", False):
            d["selection"] = "oracle-release"
        if isinstance(d.get("prep"), dict):
            d["prep"] = PrepConfig(**d["prep"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **kw) -> TrainConfig:
        return replace(self, **kw)

    def diff(self, other: TrainConfig) -> list[str]:
        """Readable differences in the experiment fields (empty: same experiment)."""
        a, b = self.experiment_dict(), other.experiment_dict()
        out = []
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
        return out

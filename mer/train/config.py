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

#: fields that do not change results (where and how fast it runs); ignored when comparing configs
RUNTIME_FIELDS = ("out", "workers", "progress", "cache_dir", "prep_workers")

DATASETS = ("casme2", "samm", "smic", "casme3")
SELECTIONS = ("fixed", "val")
INPUTS = ("face", "regions")
AUGMENTS = ("none", "ddpm")
NORMALISATIONS = ("channel", "none")
CLASS_WEIGHTS = ("balanced", "none")


_DATA, _PROTO, _OPT = "data (one source)", "protocol and inputs", "model and optimisation"
_SEL, _AUG, _RUN = "model selection (never on held-out subjects)", "augmentation", "run"


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
    data: str | None = option(None, "a `mer synth` output folder (casme2/, samm/, smic/, megc2019_composite.csv)",
                              group=_DATA)
    casme2: str | None = option(None, "real CASME II root; with --samm and --smic: the MEGC2019 composite", group=_DATA)
    samm: str | None = option(None, "real SAMM root", group=_DATA)
    smic: str | None = option(None, "real SMIC-HS root", group=_DATA)
    dataset: str | None = option(None, "a single dataset (with --root)", choices=DATASETS, group=_DATA)
    root: str | None = option(None, "root folder of --dataset", group=_DATA)
    sample_list: str | None = option(None, "sample list CSV (composite: dataset,subject,clip,label; casme3); "
                                     "default: the synthetic or the shipped list", group=_DATA)
    frames: str = option("auto", "the dataset's face crops when present (auto), or raw / cropped frames",
                         choices=("auto", "raw", "cropped"), group=_DATA)
    on_prep_error: str = option("raise", "a sample that cannot be used (a frame missing, truncated or corrupt, "
                                "no face found, ...): stop and list them all (raise), or exclude it, listed in "
                                "excluded.json / metrics.json / summary.md (warn)", choices=("raise", "warn"),
                                flag="--on-error", group=_DATA)
    # --- protocol and inputs -----------------------------------------------------------------------
    protocol: str = option("loso", "loso | kfold:K (subject-grouped) | cross:train=A,B;test=C", group=_PROTO)
    kfold_seed: int = option(0, "subject assignment of kfold:K", group=_PROTO)
    prep: PrepConfig = option(PrepConfig)  # preprocessing (keys the prep cache); options from `mer prepare`
    input: str = option("regions", "the four facial-region windows tiled 2x2 (regions, as HTNet) or the whole "
                        "face (face)", choices=INPUTS, group=_PROTO)
    normalize: str = option("channel", "per-channel (x - mean_c) / std_c with the fold's training statistics "
                            "(channel), or none", choices=NORMALISATIONS, group=_PROTO)
    # --- model and optimisation ------------------------------------------------------------------
    model: str = option("htnet_small_lape_agent", "mer.models name (`mer models`) or module:callable",
                        group=_OPT)
    model_kwargs: dict = option(dict, "create_model override, repeatable (VALUE parsed as JSON when possible)",
                                flag="--model-arg", group=_OPT)
    epochs: int = option(30, "epoch budget (select fixed) or the maximum (select val)", group=_OPT)
    batch_size: int = option(64, "minibatch size (the composite's ~435 training samples: 7 steps per epoch)",
                             group=_OPT)
    lr: float = option(1e-3, "Adam learning rate (the released HTNet's 5e-5 needs its 800 epochs)", group=_OPT)
    weight_decay: float = option(0.0, "Adam L2 weight decay", group=_OPT)
    class_weights: str = option("balanced", "cross-entropy class weights: n / (K n_c) on the fit set (balanced) "
                                "or none", choices=CLASS_WEIGHTS, group=_OPT)
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", group=_OPT)
    # --- model selection (never on the held-out subjects) ----------------------------------------
    select: str = option("fixed", "fixed: the last epoch of the budget; val: the best epoch on a validation "
                         "split of the training subjects (early stopping)", choices=SELECTIONS, group=_SEL)
    val_fraction: float = option(0.15, "share of the training *subjects* held out for select val", group=_SEL)
    patience: int = option(10, "select val: stop after this many epochs without a better validation UF1",
                           group=_SEL)
    reproduce_htnet_oracle: bool = option(False, "the released HTNet's evaluation: best epoch on the held-out "
                                          "subject. Labelled ORACLE everywhere; not a valid estimate", group=_SEL)
    # --- augmentation ----------------------------------------------------------------------------
    augment: str = option("none", "DDPM augmentation (mer.augment), trained per fold on its training subjects "
                          "only", choices=AUGMENTS, group=_AUG)
    augment_ratio: str = option("balance", "'balance' (top classes up to the largest) or a multiple of the fit "
                                "set, e.g. 1.0", group=_AUG)
    ddpm: dict = option(dict, "mer.augment.DDPMConfig override, repeatable (e.g. train_steps=200)",
                        flag="--ddpm-arg", group=_AUG)
    # --- reproducibility -------------------------------------------------------------------------
    seed: int = option(0, "seeds each fold's init (seed * 1000 + fold), data order, validation split, "
                       "augmentation", group=_RUN)
    deterministic: bool = option(True, "torch.use_deterministic_algorithms during training", group=_RUN)
    checkpoint_every: int = option(1, "epochs between resumable checkpoints (folds/<fold>/last.pt)", group=_RUN)
    # --- runtime (not part of the experiment) ----------------------------------------------------
    out: str = option("runs/train", "run directory", required=True, group=_RUN)
    workers: int = option(1, "folds in parallel worker processes (each torch.set_num_threads(cores // workers))",
                          group=_RUN)
    prep_workers: int = option(0, "preprocessing processes (0: same as --workers)", group=_RUN)
    cache_dir: str = option("~/.cache/mer/prepared", "preprocessing cache (keyed by every preprocessing "
                            "parameter)", flag="--cache", group=_RUN)
    progress: bool = option(True, "progress bars", group=_RUN)

    def __post_init__(self):
        errs = check_choices(self)
        if self.epochs < 1 or self.batch_size < 1:
            errs.append(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0:
            errs.append(f"lr must be > 0, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            errs.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.patience < 1 or self.checkpoint_every < 1:
            errs.append("patience and checkpoint_every must be >= 1")
        if self.workers < 1:
            errs.append(f"workers must be >= 1, got {self.workers}")
        if self.reproduce_htnet_oracle and self.select != "fixed":
            errs.append("reproduce_htnet_oracle replaces model selection: use it with select='fixed'")
        if self.augment_ratio != "balance":
            try:
                if float(self.augment_ratio) < 0:
                    raise ValueError
            except ValueError:
                errs.append(f"augment_ratio must be 'balance' or a number >= 0, got {self.augment_ratio!r}")
        sources = [self.data is not None, any(x is not None for x in (self.casme2, self.samm, self.smic)),
                   self.dataset is not None]
        if sum(sources) > 1:
            errs.append("give one data source: --data DIR (synthetic), or --casme2/--samm/--smic ROOTs, "
                        "or --dataset NAME --root ROOT")
        if self.dataset is not None and self.root is None:
            errs.append(f"--dataset {self.dataset} needs --root")
        from mer.train.folds import parse_protocol

        try:
            parse_protocol(self.protocol)
        except ValueError as e:
            errs.append(str(e))
        if errs:
            raise ValueError("invalid TrainConfig: " + "; ".join(errs))

    # -------------------------------------------------------------------------------------------
    @property
    def selection_label(self) -> str:
        """How the evaluated epoch was chosen, as written in metrics, tables and plot titles."""
        if self.reproduce_htnet_oracle:
            return "ORACLE (HTNet reproduction: best epoch on the held-out subject; not a valid estimate)"
        if self.select == "val":
            return f"early stopping on {self.val_fraction:.0%} of training subjects (patience {self.patience})"
        return f"fixed budget ({self.epochs} epochs, last epoch)"

    @property
    def valid_estimate(self) -> bool:
        """False when the held-out subjects chose the epoch (the oracle reproduction)."""
        return not self.reproduce_htnet_oracle

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
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        d = dict(d)
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

"""TrainConfig: every setting of a training/evaluation run, typed, with its default and why.

The resolved config is written to ``RUNDIR/config.json`` and into every checkpoint. A rerun into the same
run directory must resolve to the same *experiment* (every field except the runtime ones listed in
``RUNTIME_FIELDS``): otherwise :class:`ConfigMismatch` (or ``--force`` to start afresh).

Defaults are the ones measured on the 2-core development CPU (docs/training.md gives the numbers).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

from mer.preprocess.config import PrepConfig

#: fields that do not change results (where and how fast it runs); ignored when comparing configs
RUNTIME_FIELDS = ("out", "workers", "progress", "cache_dir", "prep_workers")

SELECTIONS = ("fixed", "val")
INPUTS = ("face", "regions")
AUGMENTS = ("none", "ddpm")
NORMALISATIONS = ("channel", "none")
CLASS_WEIGHTS = ("balanced", "none")


class ConfigMismatch(ValueError):
    """The run directory holds a run with another config."""


@dataclass(frozen=True)
class TrainConfig:
    """A training + evaluation run (one model per fold, pooled UF1/UAR over all folds).

    Data: exactly one source, ``data`` (synthetic folder), the real composite roots, or ``dataset`` +
    ``root``. Each field's comment gives its meaning and default; docs/training.md the measurements.
    """

    # --- data ------------------------------------------------------------------------------------
    data: str | None = None  # a `mer synth` output folder: DIR/{casme2,samm,smic} + DIR/megc2019_composite.csv
    casme2: str | None = None  # real CASME II root (with --samm/--smic: the MEGC2019 composite)
    samm: str | None = None  # real SAMM root
    smic: str | None = None  # real SMIC-HS root
    dataset: str | None = None  # a single dataset: casme2 | samm | smic | casme3 (with `root`)
    root: str | None = None  # its root folder
    sample_list: str | None = None  # composite/casme3 sample list CSV (None: synthetic list or shipped list)
    frames: str = "auto"  # dataset crops when present ('auto'), or 'raw' / 'cropped'
    on_prep_error: str = "raise"  # a sample that cannot be prepared (e.g. no face found): 'raise' (stop, list them
    #                               all) or 'warn' (exclude it; listed in excluded.json, metrics.json, summary.md)
    # --- protocol --------------------------------------------------------------------------------
    protocol: str = "loso"  # 'loso' | 'kfold:K' (subject-grouped) | 'cross:train=casme2,samm;test=smic'
    kfold_seed: int = 0  # subject assignment of kfold:K
    # --- preprocessing (mer.preprocess.PrepConfig; keys the prep cache) --------------------------
    prep: PrepConfig = field(default_factory=PrepConfig)  # TV-L1 flow, 28x28 maps, 128 px face
    input: str = "regions"  # 'regions' (four facial windows tiled 2x2, as HTNet) or 'face' (whole face)
    normalize: str = "channel"  # 'channel': (x - mean_c) / std_c with the fold's training statistics; 'none'
    # --- model -----------------------------------------------------------------------------------
    model: str = "htnet_small_lape_agent"  # mer.models.create_model name (`mer models` lists them)
    model_kwargs: dict = field(default_factory=dict)  # overrides for create_model, e.g. {"dropout": 0.1}
    # --- optimisation ----------------------------------------------------------------------------
    epochs: int = 30  # fixed epoch budget (select='fixed') or the maximum (select='val')
    batch_size: int = 64  # minibatch size (the composite's ~435 training samples: 7 steps per epoch)
    lr: float = 1e-3  # Adam learning rate (the released HTNet's 5e-5 needs its 800 epochs)
    weight_decay: float = 0.0  # Adam L2 weight decay
    class_weights: str = "balanced"  # cross-entropy weights: 'balanced' (n / (K * n_c) on the fit set) or 'none'
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    # --- model selection (never on the held-out subjects) ----------------------------------------
    select: str = "fixed"  # 'fixed': the last epoch; 'val': best epoch on a validation split of training subjects
    val_fraction: float = 0.15  # share of the training *subjects* held out for select='val'
    patience: int = 10  # select='val': stop after this many epochs without a better validation UF1
    # HTNet's released test-set epoch selection (labelled ORACLE; not a valid estimate)
    reproduce_htnet_oracle: bool = False
    # --- augmentation ----------------------------------------------------------------------------
    augment: str = "none"  # 'none' | 'ddpm' (mer.augment, trained per fold on its training subjects only)
    augment_ratio: str = "balance"  # 'balance' (top classes up to the largest) or a multiple of the fit set, e.g. '1.0'
    ddpm: dict = field(default_factory=dict)  # overrides of mer.augment.DDPMConfig (e.g. {"train_steps": 200})
    # --- reproducibility -------------------------------------------------------------------------
    seed: int = 0  # seeds each fold's init (seed + fold index), data order, validation split, augmentation
    deterministic: bool = True  # torch.use_deterministic_algorithms(True) during training
    checkpoint_every: int = 1  # epochs between resumable checkpoints (folds/<fold>/last.pt)
    # --- runtime (not part of the experiment) ----------------------------------------------------
    out: str = "runs/train"  # run directory
    workers: int = 1  # folds run in parallel worker processes (each torch.set_num_threads(cores // workers))
    prep_workers: int = 0  # processes for preprocessing (0: same as workers)
    cache_dir: str = "~/.cache/mer/prepared"  # preprocessing cache (keyed by every PrepConfig parameter)
    progress: bool = True  # tqdm bars

    def __post_init__(self):
        errs = []
        if self.input not in INPUTS:
            errs.append(f"input must be one of {INPUTS}, got {self.input!r}")
        if self.normalize not in NORMALISATIONS:
            errs.append(f"normalize must be one of {NORMALISATIONS}, got {self.normalize!r}")
        if self.select not in SELECTIONS:
            errs.append(f"select must be one of {SELECTIONS}, got {self.select!r}")
        if self.augment not in AUGMENTS:
            errs.append(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.on_prep_error not in ("raise", "warn"):
            errs.append(f"on_prep_error must be 'raise' or 'warn', got {self.on_prep_error!r}")
        if self.class_weights not in CLASS_WEIGHTS:
            errs.append(f"class_weights must be one of {CLASS_WEIGHTS}, got {self.class_weights!r}")
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
        if self.dataset is not None and self.dataset not in ("casme2", "samm", "smic", "casme3"):
            errs.append(f"dataset must be casme2, samm, smic or casme3, got {self.dataset!r}")
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

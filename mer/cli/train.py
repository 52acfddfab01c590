"""``mer train``: prepare, train one model per fold, predict the held-out subjects, pooled UF1/UAR."""
from __future__ import annotations

import argparse

EXAMPLES = """examples:
  # the synthetic composite (mer synth --out synth), MEGC2019 LOSO (68 folds), default model
  mer train --data synth --protocol loso --workers 2 --out runs/loso
  # a quick subject-grouped 5-fold run with the fast DIS flow
  mer train --data synth --protocol kfold:5 --flow dis --epochs 20 --out runs/k5
  # the real composite; cross-dataset; one dataset
  mer train --casme2 /data/CASME2 --samm /data/SAMM --smic /data/SMIC --out runs/megc
  mer train --data synth --protocol "cross:train=casme2,samm;test=smic" --out runs/cross
  mer train --dataset casme3 --root /data/CASME3/part_A --protocol kfold:10 --out runs/casme3
  # early stopping on 15% of the training subjects; DDPM augmentation per fold
  mer train --data synth --select val --epochs 80 --patience 10 --out runs/val
  mer train --data synth --augment ddpm --augment-ratio balance --out runs/ddpm
  # across processes or machines (folds sharded over ranks, one merged run directory)
  torchrun --nproc_per_node=2 -m mer train --data synth --out runs/dist
  # the released HTNet's test-set epoch selection, labelled ORACLE everywhere (not a valid estimate)
  mer train --data synth --model htnet_original --reproduce-htnet-oracle --out runs/oracle

Interrupt and rerun the same command: finished folds are kept and the interrupted fold resumes from its
last epoch checkpoint. A different config into an existing run directory is an error (or --force).
Outputs (RUNDIR): config.json, folds/<fold>/{model.pt,predictions.csv,history.json,result.json},
predictions.csv, metrics.json, megc_log.txt, summary.md, confusion.png, learning_curves.png.
Details and measured defaults: docs/training.md.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from mer.cli.prepare import add_prep_args
    from mer.train.config import TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train and evaluate a model (LOSO / K-fold / cross-dataset), pooled UF1/UAR",
        description="Prepare the data (cached), train a fresh model per fold with statistics and model "
        "selection from the training subjects only, predict the held-out subjects, and write pooled "
        "UF1/UAR (overall and per dataset), the MEGC log, tables and plots into a run directory.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data (one source)")
    g.add_argument("--data", help="a `mer synth` output folder (casme2/, samm/, smic/, megc2019_composite.csv)")
    g.add_argument("--casme2", help="CASME II root; with --samm and --smic: the MEGC2019 composite")
    g.add_argument("--samm", help="SAMM root")
    g.add_argument("--smic", help="SMIC-HS root")
    g.add_argument("--dataset", choices=["casme2", "samm", "smic", "casme3"], help="a single dataset (with --root)")
    g.add_argument("--root", help="root of --dataset")
    g.add_argument("--sample-list", help="sample list CSV (composite: dataset,subject,clip,label; casme3)")
    g.add_argument("--frames", default=d.frames, choices=["auto", "raw", "cropped"])
    g.add_argument("--on-prep-error", default=d.on_prep_error, choices=["raise", "warn"],
                   help="a sample that cannot be prepared (e.g. no face found): stop with the list (raise), "
                   "or exclude it, listed in excluded.json / metrics.json / summary.md (warn)")
    g = p.add_argument_group("protocol and preprocessing")
    g.add_argument("--protocol", default=d.protocol,
                   help="loso | kfold:K | cross:train=A,B;test=C (default %(default)s)")
    g.add_argument("--kfold-seed", type=int, default=d.kfold_seed, help="subject assignment of kfold:K")
    g.add_argument("--input", default=d.input, choices=["face", "regions"],
                   help="whole-face maps or the four facial-region windows tiled 2x2 (default %(default)s)")
    g.add_argument("--normalize", default=d.normalize, choices=["channel", "none"],
                   help="per-channel standardisation with the fold's training statistics (default %(default)s)")
    add_prep_args(g)  # --size --flow --face-size --face --face-margin --motion-compensation --regions --smic-apex
    g.add_argument("--cache", default=d.cache_dir, help="preprocessing cache (default %(default)s)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--model", default=d.model, help="mer.models name (`mer models`) or module:callable "
                   "(default %(default)s)")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="create_model override, repeatable (VALUE parsed as JSON when possible)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epoch budget (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--class-weights", default=d.class_weights, choices=["balanced", "none"],
                   help="cross-entropy class weights (default %(default)s)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g = p.add_argument_group("model selection (never on held-out subjects)")
    g.add_argument("--select", default=d.select, choices=["fixed", "val"],
                   help="fixed: last epoch; val: early stopping on a split of training subjects")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of training subjects")
    g.add_argument("--patience", type=int, default=d.patience)
    g.add_argument("--reproduce-htnet-oracle", action="store_true",
                   help="HTNet's released evaluation: best epoch on the held-out subject. Results are "
                   "labelled ORACLE and are not a valid estimate")
    g = p.add_argument_group("augmentation")
    g.add_argument("--augment", default=d.augment, choices=["none", "ddpm"])
    g.add_argument("--augment-ratio", default=d.augment_ratio, help="'balance' or a multiple, e.g. 1.0")
    g.add_argument("--ddpm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="mer.augment.DDPMConfig override, repeatable (e.g. train_steps=200)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d.seed, help="(default %(default)s)")
    g.add_argument("--no-deterministic", action="store_true", help="allow non-deterministic torch kernels")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="epochs between resume points")
    g.add_argument("--workers", type=int, default=d.workers, help="folds in parallel processes (default %(default)s)")
    g.add_argument("--prep-workers", type=int, default=0, help="preprocessing processes (default: --workers)")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--force", action="store_true", help="replace a run directory holding another config")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _kv(items: list[str], what: str) -> dict:
    import json

    out = {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"{what} expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
        if isinstance(out[k], list):
            out[k] = tuple(out[k])
    return out


def config_from_args(args):
    from mer.cli.prepare import prep_config
    from mer.train.config import TrainConfig

    prep = prep_config(args)
    return TrainConfig(
        data=args.data, casme2=args.casme2, samm=args.samm, smic=args.smic, dataset=args.dataset, root=args.root,
        sample_list=args.sample_list, frames=args.frames, on_prep_error=args.on_prep_error,
        protocol=args.protocol, kfold_seed=args.kfold_seed,
        prep=prep, input=args.input, normalize=args.normalize, model=args.model,
        model_kwargs=_kv(args.model_arg, "--model-arg"), epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, class_weights=args.class_weights,
        label_smoothing=args.label_smoothing, select=args.select, val_fraction=args.val_fraction,
        patience=args.patience, reproduce_htnet_oracle=args.reproduce_htnet_oracle, augment=args.augment,
        augment_ratio=args.augment_ratio, ddpm=_kv(args.ddpm_arg, "--ddpm-arg"), seed=args.seed,
        deterministic=not args.no_deterministic, checkpoint_every=args.checkpoint_every, out=args.out,
        workers=args.workers, prep_workers=args.prep_workers, cache_dir=args.cache,
        progress=not args.no_progress)


def run(args) -> int:
    import sys

    from mer.data import DatasetError
    from mer.preprocess import PrepError
    from mer.train import ConfigMismatch, FoldFailure, run_training
    from mer.train.data import DataSourceError
    from mer.train.models import ModelError

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"mer train: error: {e}", file=sys.stderr)
        return 2
    try:
        run_training(cfg, force=args.force)
    except (ConfigMismatch, DataSourceError, DatasetError, PrepError, ModelError, FoldFailure) as e:
        print(f"mer train: error: {e}", file=sys.stderr)
        return 2
    return 0

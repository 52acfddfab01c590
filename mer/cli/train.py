"""``mer train``: prepare, train one model per fold, predict the held-out subjects, pooled UF1/UAR.

The options are generated from :class:`mer.train.TrainConfig` (each field's help, type, default and
choices live on the field; see mer.options); the preprocessing options are `mer prepare`'s.
"""
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
  # the public HTNet release's composite (a clone of wangzhifengharrison/HTNet): its tiles, its 68 LOSO folds
  mer train --data htnet-release:/data/HTNet --model htnet_small_lape --workers 2 --out runs/real
  mer train --data htnet-release:/data/HTNet --input face --normalize none --out runs/real_flow_raw
  mer train --data htnet-release:/data/HTNet --protocol holdout-dataset --out runs/real_holdout
  # early stopping on 15% of the training subjects; DDPM augmentation per fold
  mer train --data synth --selection val --epochs 80 --patience 10 --out runs/val
  mer train --data synth --augment ddpm --augment-ratio balance --out runs/ddpm
  # across processes or machines (folds sharded over ranks, one merged run directory)
  torchrun --nproc_per_node=2 -m mer train --data synth --out runs/dist
  # several folds per step (stacked parameters, one vmapped forward/backward), 2 processes
  mer train --data synth --fold-batch 17 --workers 2 --out runs/batched
  # the release's settings; with its test-fold epoch selection, labelled "oracle ... not a valid estimate"
  mer train --data htnet-release:/data/HTNet --preset release --out runs/release_fixed
  mer train --data htnet-release:/data/HTNet --preset release --selection oracle-release --out runs/release_oracle

Interrupt and rerun the same command: finished folds are kept and the interrupted fold resumes from its
last epoch checkpoint. A different config into an existing run directory is an error (or --force).
Outputs (RUNDIR): config.json, folds/<fold>/{model.pt,predictions.csv,history.json,result.json},
predictions.csv, metrics.json, megc_log.txt, summary.md, confusion.png, learning_curves.png.
Details and measured defaults: docs/training.md.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from mer.cli.prepare import add_prep_args
    from mer.options import add_options
    from mer.train.config import TrainConfig

    p = subparsers.add_parser(
        "train", help="train and evaluate a model (LOSO / K-fold / cross-dataset), pooled UF1/UAR",
        description="Prepare the data (cached), train a fresh model per fold with statistics and model "
        "selection from the training subjects only, predict the held-out subjects, and write pooled "
        "UF1/UAR (overall and per dataset), the MEGC log, tables and plots into a run directory.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sections: dict = {}
    add_options(p, TrainConfig, sections=sections)
    add_prep_args(sections["protocol and inputs"])  # --size --flow --face-size --face ... (PrepConfig)
    sections["run"].add_argument("--force", action="store_true",
                                 help="replace a run directory holding another config")
    return p


def config_from_args(args):
    """The TrainConfig of parsed `mer train` arguments (ValueError on an invalid combination)."""
    from mer.cli.prepare import prep_config
    from mer.options import given_options
    from mer.train.config import TrainConfig

    return TrainConfig.from_preset(**given_options(TrainConfig, args), prep=prep_config(args))


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

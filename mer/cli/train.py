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
        "train",
        help="train and evaluate a model (LOSO / K-fold / cross-dataset), pooled UF1/UAR",
        description="Prepare the data (cached), train a fresh model per fold with statistics and model "
        "selection from the training subjects only, predict the held-out subjects, and write pooled "
        "UF1/UAR (overall and per dataset), the MEGC log, tables and plots into a run directory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sections: dict = {}
    add_options(p, TrainConfig, sections=sections)
    add_prep_args(sections["protocol and inputs"])  # --size --flow --face-size --face ... (PrepConfig)
    sections["data (one source)"].add_argument(
        "--on-prep-error",
        dest="on_prep_error",
        choices=("raise", "warn"),
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )  # former name
    sections["run"].add_argument(
        "--force",
        action="store_true",
        help="delete what the run directory holds and start afresh (a run of another "
        "config, or one whose inputs changed since its folds were trained)",
    )
    return p


def config_from_args(args):
    """The TrainConfig of parsed `mer train` arguments (ValueError on an invalid combination)."""
    from mer.cli.prepare import prep_config
    from mer.options import given_options
    from mer.train.config import TrainConfig

    return TrainConfig.from_preset(**given_options(TrainConfig, args), prep=prep_config(args))


def check_writable(path, what: str) -> None:
    """CliError (one line) unless files can be written in folder ``path``, or it can be created. Nothing is
    created here: a probe file is written in ``path`` or, when it does not exist yet, in the nearest folder
    above it that does."""
    import os
    import tempfile
    from pathlib import Path

    from mer.cli.prepare import CliError

    p = Path(path).expanduser().absolute()
    probe_in = p
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        where = "is a file" if probe_in == p else f"cannot be created: {probe_in} is a file"
        raise CliError(f"{what} {p} {where}; pass a folder (it is created if needed)")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_in, prefix=".mer-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = e.strerror or str(e)
        what_failed = (
            f"cannot write to {what} {p} ({why})"
            if probe_in == p
            else f"cannot create {what} {p}: {probe_in} is not writable ({why})"
        )
        raise CliError(f"{what_failed}; choose a folder you can write to") from None


def run(args) -> int:
    """`mer train`: every error a user can cause ends as one ``mer train: error: <what, what to do>`` message
    (exit status 2), never a traceback; notices and warnings are ``notice:``/``warning:`` lines."""
    import sys

    from mer.cli.prepare import CliError, cli_message, plain_warnings
    from mer.data import DatasetError
    from mer.evaluation import IncompleteRun
    from mer.preprocess import PrepError
    from mer.train import ConfigMismatch, FoldFailure, run_training
    from mer.train.config import FoldListError
    from mer.train.data import DataSourceError
    from mer.train.device import DeviceError
    from mer.train.lock import RunLocked
    from mer.train.models import ModelError

    def fail(msg: str) -> int:
        print(f"mer train: error: {msg}", file=sys.stderr)
        return 2

    plain_warnings()
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        return fail(str(e))
    try:
        check_writable(cfg.out, "--out")
        check_writable(cfg.cache_dir, "--cache")
        run_training(cfg, force=args.force)
    except (
        CliError,
        ConfigMismatch,
        DataSourceError,
        DeviceError,
        FoldListError,
        DatasetError,
        PrepError,
        ModelError,
        FoldFailure,
        RunLocked,
        IncompleteRun,
    ) as e:
        msg = cli_message(e)
        if cfg.dataset is None:  # the loaders' advice in `mer train`'s terms (--annotation: --dataset only)
            msg = msg.replace(
                "point --root/--annotation at the right place",
                "point --data (or --casme2/--samm/--smic, --root) at the right place",
            )
        return fail(msg)
    except OSError as e:  # a full disk, a folder removed or made read-only while the run writes
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return fail(
            f"{e.strerror or e}{where}; check the disk and the folder's permissions, then rerun the same "
            "command (finished folds are kept, the interrupted one resumes from its checkpoint)"
        )
    return 0

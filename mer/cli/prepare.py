"""``mer prepare``: load a dataset (or the MEGC2019 composite) and preprocess it into the cache."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mer prepare --dataset casme2 --root /data/CASME2 --out cache/ --workers 2
  mer prepare --dataset composite --casme2 /data/CASME2 --samm /data/SAMM --smic /data/SMIC --out cache/
  mer prepare --dataset composite --casme2 synth/casme2 --samm synth/samm --smic synth/smic \\
      --sample-list synth/megc2019_composite.csv --out cache/ --flow dis --size 28
  mer prepare --dataset casme3 --root /data/CASME3/part_A --out cache/ --on-error warn
  mer prepare --dataset samm --root /data/SAMM --check        # decode every frame, list the bad ones

The cache is keyed by the dataset, the sample and every preprocessing parameter: a rerun with the same
options only reads it; a changed option recomputes; an interrupted run resumes where it stopped.
The stacked arrays are also written to OUT/<name>.npz (face, regions, labels, uid, cfg, meta).
--check reads every frame of every clip folder (not only onset and apex) completely and lists the bad
ones (zero bytes, truncated, undecodable); exit status 1 when there are any. Errors are one line
(`error: ...`, exit status 2) with what to do.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare",
        help="preprocess a dataset: face crop, optical flow, strain, regions (cached)",
        description="Load a micro-expression dataset in its native layout, validate it, and compute the "
        "model inputs (u, v, strain of the whole face and of four facial regions) into a cache.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_args(p)
    p.add_argument("--out", help="cache folder (created if needed); not needed with --check")
    p.add_argument(
        "--check",
        action="store_true",
        help="only check that every frame of the dataset reads completely (no preprocessing)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    add_prep_args(p)
    p.add_argument("--name", default=None, help="name of the stacked .npz in OUT (default: the dataset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=["casme2", "samm", "smic", "casme3", "composite"])
    p.add_argument("--root", help="dataset root (single datasets)")
    p.add_argument("--casme2", help="CASME II root (composite)")
    p.add_argument("--samm", help="SAMM root (composite)")
    p.add_argument("--smic", help="SMIC root (composite)")
    p.add_argument(
        "--sample-list",
        help="composite: a dataset,subject,clip,label CSV (default: the shipped "
        "442-sample list); casme3: a list like casme3_partA.csv",
    )
    p.add_argument("--annotation", help="annotation file (single datasets; default: found in --root)")
    p.add_argument(
        "--frames",
        default="auto",
        choices=["auto", "raw", "cropped"],
        help="dataset crops when present (auto), or force raw/cropped frames",
    )
    p.add_argument(
        "--on-error",
        default="raise",
        choices=["raise", "warn"],
        help="raise: stop with every problem listed; warn: exclude bad samples (counted)",
    )
    p.add_argument(
        "--missing-apex",
        default="estimate",
        choices=["estimate", "error"],
        help="rows with '/' or blank apex: middle frame (flagged) or an error",
    )
    p.add_argument(
        "--all-labels",
        action="store_true",
        help="single datasets: keep samples outside the 3-class protocol (label None)",
    )
    p.add_argument(
        "--errata",
        default="shipped",
        help="known annotation errors of the public sheets: 'shipped' (correct them, announced "
        "and recorded per sample; default), 'none', or a table CSV (docs/data.md)",
    )


def add_prep_args(p: argparse.ArgumentParser) -> None:
    from mer.preprocess.config import PrepConfig

    d = PrepConfig()
    p.add_argument("--size", type=int, default=d.size, help=f"output side S (default {d.size})")
    p.add_argument("--flow", default=d.flow, choices=["tvl1", "farneback", "dis"])
    p.add_argument("--face-size", type=int, default=d.face_size, help=f"face crop side (default {d.face_size})")
    p.add_argument("--face", default=d.face, choices=["auto", "detect", "full"])
    p.add_argument("--face-margin", type=float, default=d.face_margin)
    p.add_argument("--motion-compensation", action="store_true", help="subtract the nose-root flow")
    p.add_argument("--regions", default=d.regions, choices=["auto", "canonical", "landmarks"])
    p.add_argument(
        "--smic-apex",
        default=d.smic_apex,
        choices=["sample", "middle", "max_diff"],
        help="apex for samples without one (SMIC, CASME II '/')",
    )


def plain_warnings() -> None:
    """Show warnings as ``warning: <message>`` lines on stderr (no source line) for command-line use, with
    the API's option spellings turned into the CLI's (cli_message)."""
    import sys
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {cli_message(message)}", file=file or sys.stderr)

    warnings.showwarning = show


def prep_config(args):
    from mer.preprocess.config import PrepConfig

    return PrepConfig(
        size=args.size,
        flow=args.flow,
        face_size=args.face_size,
        face=args.face,
        face_margin=args.face_margin,
        motion_compensation=args.motion_compensation,
        regions=args.regions,
        smic_apex=args.smic_apex,
    )


def load_samples(args) -> list:
    from mer.data import casme3_part_a, load_dataset, megc2019_composite

    common = {
        "frames": args.frames,
        "on_error": args.on_error,
        "missing_apex": args.missing_apex,
        "errata": getattr(args, "errata", "shipped"),
    }
    per_dataset = [f"--{d}" for d in ("casme2", "samm", "smic") if getattr(args, d)]
    if args.dataset == "composite":
        if args.root or args.annotation:
            raise SystemExit(
                "--dataset composite takes --casme2/--samm/--smic (and --sample-list), not --root/--annotation"
            )
        return megc2019_composite(
            casme2=args.casme2, samm=args.samm, smic=args.smic, sample_list=args.sample_list, **common
        )
    if not args.root:
        raise SystemExit(f"--dataset {args.dataset} needs --root")
    if per_dataset:
        raise SystemExit(f"{', '.join(per_dataset)} only apply to --dataset composite; use --root")
    if args.sample_list and args.dataset != "casme3":
        raise SystemExit("--sample-list applies to --dataset composite or casme3 only")
    if args.dataset == "casme3" and not args.all_labels:
        return casme3_part_a(args.root, sample_list=args.sample_list, annotation=args.annotation, **common)
    samples = load_dataset(args.dataset, args.root, annotation=args.annotation, **common)
    if not args.all_labels:
        n = len(samples)
        samples = [s for s in samples if s.label is not None]
        print(
            f"{args.dataset}: {n} samples, {len(samples)} in the 3-class protocol "
            f"({n - len(samples)} outside it, e.g. 'others'; --all-labels keeps them)"
        )
    return samples


class CliError(Exception):
    """A user error of the command line: printed as one ``error:`` line, exit status 2."""


def check_out_dir(path, what: str = "--out") -> None:
    """Create ``path`` if needed and make sure files can be written in it (one-line CliError if not)."""
    import os
    import tempfile
    from pathlib import Path

    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise CliError(f"{what} {p} is a file, not a folder; pass a folder (it is created if needed)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".mer-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CliError(f"cannot write to {what} {p} ({e.strerror or e}); choose a folder you can write to") from None


def cli_message(e: BaseException) -> str:
    """The message of a data/preprocessing error, with the API's option spellings turned into the CLI's."""
    msg = str(e).strip()
    for api, cli in (
        ("on_error='warn'", "--on-error warn"),
        ("errata='none'", "--errata none"),
        ("missing_apex='estimate'", "--missing-apex estimate"),
        ("missing_apex='error'", "--missing-apex error"),
        ("`root`/`annotation`", "--root/--annotation"),
        ("annotation=PATH (CLI: --annotation PATH)", "--annotation PATH"),
        ("PrepConfig(face='full') (CLI --face full; `mer predict`: --cropped)", "--face full"),
    ):
        msg = msg.replace(api, cli)
    return msg


def run(args) -> int:
    """`mer prepare`: every user error ends as ``error: <what and what to do>`` on stderr, exit status 2."""
    return with_one_line_errors(_run, args)


def with_one_line_errors(body, args) -> int:
    """``body(args)``, with the data and preprocessing errors a user can cause printed as one
    ``error: ...`` message (exit status 2) instead of a traceback."""
    import sys

    from mer.data.problems import DatasetError
    from mer.preprocess.face import FaceNotFoundError
    from mer.preprocess.pipeline import PrepError

    try:
        return body(args)
    except (CliError, DatasetError, PrepError, FaceNotFoundError) as e:
        print(f"error: {cli_message(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up or a folder vanished while writing
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(
            f"error: {e.strerror or e}{where}; check the disk and the folder's permissions, then rerun "
            "(finished samples are cached)",
            file=sys.stderr,
        )
        return 2


def _run(args) -> int:
    import time
    from collections import Counter
    from pathlib import Path

    from mer.preprocess import prepare

    plain_warnings()
    if args.check:
        return run_check(args)
    if not args.out:
        raise CliError("--out is required (the cache folder), unless you only --check the frames")
    try:
        cfg = prep_config(args)
    except ValueError as e:  # invalid option values: PrepConfig names them
        raise CliError(str(e)) from None
    check_out_dir(args.out)
    samples = load_samples(args)
    print(f"{len(samples)} samples: " + ", ".join(f"{d} {n}" for d, n in Counter(s.dataset for s in samples).items()))
    t0 = time.perf_counter()
    ps = prepare(samples, cfg, args.out, workers=args.workers, progress=not args.no_progress, on_error=args.on_error)
    dt = time.perf_counter() - t0
    out = Path(args.out) / f"{args.name or args.dataset}.npz"
    ps.save(out)
    print(
        f"prepared {len(ps)} samples in {dt:.1f} s ({len(ps.failed)} excluded); face {ps.face.shape}, "
        f"regions {ps.regions.shape}; wrote {out}"
    )
    return 0


def run_check(args) -> int:
    """Decode every image file in every clip folder of the dataset; list the bad ones (exit 1 if any)."""
    from mer.preprocess.check import check_frames

    args.all_labels = True  # every annotated clip, not only the protocol's
    samples = load_samples(args)
    report = check_frames(samples, workers=max(1, args.workers), progress=not args.no_progress)
    print(report.summary())
    for path, why in report.bad:
        print(f"  {path}: {why}")
    return 1 if report.bad else 0

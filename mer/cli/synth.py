"""``mer synth``: write the synthetic micro-expression datasets (CASME II-, SAMM- and SMIC-like)."""

from __future__ import annotations

import argparse
import os

EXAMPLES = """\
examples:
  mer synth --out data/synth                                # composite, calibrated difficulty (0.4), seed 0
  mer synth --out /tmp/tiny --preset tiny                   # a few clips in seconds (tests)
  mer synth --out data/hard --difficulty hard --seed 1 --workers 2
  mer synth --out data/synth --difficulty 0.35 --contact-sheet sheet.png
  mer synth --out data/synth --contact-sheet sheet.png --sheet-only   # sheet of existing data

Output: DIR/casme2 (CASME2_RAW_selected/..., CASME2-coding-20140508.xlsx), DIR/samm (SAMM/...,
SAMM_Micro_FACS_Codes_v2.xlsx), DIR/smic (HS/sN/micro/<class>/...), DIR/megc2019_composite.csv,
DIR/<dataset>/synth_truth.csv (ground truth, e.g. the SMIC apex), DIR/synth_config.json.
Load it with mer.data.megc2019_composite(casme2=DIR/casme2, samm=DIR/samm, smic=DIR/smic,
sample_list=DIR/megc2019_composite.csv). Details and measured numbers: docs/synth.md.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth",
        help="generate the synthetic micro-expression datasets",
        description="Generate synthetic CASME II-, SAMM- and SMIC-HS-like micro-expression datasets in "
        "their native layouts and annotation formats, with the MEGC2019 composite's structure "
        "(68 subjects, 442 protocol clips plus 'others'). Same seed, same bytes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument(
        "--preset",
        default="composite",
        choices=("composite", "tiny"),
        help="composite: the full MEGC2019 structure (~21k frames, ~650 MB); tiny: 6 subjects, "
        "20 short clips (default: composite)",
    )
    p.add_argument(
        "--difficulty",
        default="calibrated",  # = mer.synth.config.DEFAULT_DIFFICULTY (tested)
        help="easy | calibrated | medium | hard, or a number in [0, 1] (easy=0.2, calibrated=0.4, "
        "medium=0.5, hard=0.8); sets expression amplitude, nuisances and class overlap (default: "
        "calibrated: the linear floor matches the real composite's, docs/synth.md)",
    )
    p.add_argument("--seed", type=int, default=0, help="root random seed (default: 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes for rendering; the output does not depend on it (default: 2)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace generated data already in --out")
    p.add_argument(
        "--smic-color",
        action="store_true",
        help="write SMIC-like frames as 24-bit colour BMP (default: 8-bit greyscale; colour "
        "roughly triples the SMIC part's ~400 MB)",
    )
    p.add_argument(
        "--contact-sheet",
        metavar="PNG",
        help="also write a contact sheet (onset, apex, magnified difference, flow) of one clip per class and dataset",
    )
    p.add_argument(
        "--sheet-only",
        action="store_true",
        help="with --contact-sheet: do not generate, only draw the sheet of the data in --out",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    import sys

    from mer.synth.config import SynthConfig, parse_difficulty

    if args.sheet_only and not args.contact_sheet:
        print("error: --sheet-only needs --contact-sheet PNG", file=sys.stderr)
        return 2
    if not args.sheet_only:
        from mer.synth.generate import generate

        try:
            parse_difficulty(args.difficulty)
            cfg = SynthConfig(
                preset=args.preset, difficulty=args.difficulty, seed=args.seed, smic_color=args.smic_color
            )
            summary = generate(
                cfg, args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress
            )
        except (ValueError, FileExistsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(summary)
    if args.contact_sheet:
        from mer.synth.contact import contact_sheet

        try:
            path = contact_sheet(args.out, args.contact_sheet)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"contact sheet: {path}")
    return 0

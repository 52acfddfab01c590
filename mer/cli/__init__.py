"""The ``mer`` command line: ``mer <command> [options]`` (also ``python -m mer``).

Each command lives in its own module ``mer/cli/<command>.py`` exposing

    def add_parser(subparsers) -> argparse.ArgumentParser   # registers the command, its --help and examples
    def run(args) -> int                                      # does the work; imports heavy modules lazily

A command whose module does not exist (yet) is simply not offered.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# command name -> module; order is the order of `mer --help`
COMMANDS = {
    "synth": "mer.cli.synth",
    "prepare": "mer.cli.prepare",
    "show-sample": "mer.cli.show_sample",
    "models": "mer.cli.models",
    "train": "mer.cli.train",
    "evaluate": "mer.cli.evaluate",
    "predict": "mer.cli.predict",
    "prune": "mer.cli.prune",
    "augment": "mer.cli.augment",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mer",
        description="Micro-expression recognition: synthetic data, preprocessing, HTNet with LAPE and "
        "agent attention, LOSO training and UF1/UAR evaluation, ESAAT pruning, DDPM augmentation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for modname in COMMANDS.values():
        if importlib.util.find_spec(modname) is None:
            continue
        mod = importlib.import_module(modname)
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

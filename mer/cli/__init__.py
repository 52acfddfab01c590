"""The ``mer`` command line: ``mer <command> [options]`` (also ``python -m mer``).

Each command lives in its own module ``mer/cli/<command>.py`` exposing

    def add_parser(subparsers) -> argparse.ArgumentParser   # registers the command, its --help and examples
    def run(args) -> int                                      # does the work; imports heavy modules lazily

A command whose module fails to import stays listed, marked unavailable with the error, and running it
prints that error and exits 1 (the other commands keep working).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

# command name -> module; order is the order of `mer --help`
COMMANDS = {
    "synth": "mer.cli.synth",
    "prepare": "mer.cli.prepare",
    "show-sample": "mer.cli.show_sample",
    "models": "mer.cli.models",
    "train": "mer.cli.train",
    "evaluate": "mer.cli.evaluate",
    "compare": "mer.cli.compare",
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
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except Exception as e:  # shown in --help and when the command is run; the other commands still work
            error = f"cannot load {modname}: {type(e).__name__}: {e}"
            # no option prefix: whatever follows the command is taken as is, and the error is printed
            p = sub.add_parser(name, help=f"UNAVAILABLE ({error})", add_help=False, prefix_chars="\0")
            p.add_argument("rest", nargs="*")
            p.set_defaults(_run=functools.partial(_unavailable, name, error))
            continue
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def _unavailable(name: str, error: str, args) -> int:
    print(f"mer {name}: error: {error}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

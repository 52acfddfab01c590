"""Config dataclass fields that carry their own command-line option, so each setting is written once.

    @dataclass(frozen=True)
    class MyConfig:
        epochs: int = option(30, "epoch budget", group="optimisation")
        mode: str = option("fixed", "how to choose", choices=("fixed", "val"))
        extra: dict = option(dict, "overrides, repeatable", flag="--extra-arg")     # KEY=VALUE, JSON values

    add_options(parser, MyConfig)              # --epochs N, --mode {fixed,val}, --extra-arg KEY=VALUE ...
    cfg = options_from_args(MyConfig, args)    # the dataclass, from the parsed arguments
    given = given_options(MyConfig, args)      # only the options on the command line (e.g. over a preset)
    check_choices(cfg)                         # in __post_init__: every choices= field holds an allowed value

The field's type gives the option's type: bool -> ``--x/--no-x``; ``int``/``float``/``str`` (or ``X | None``)
-> a typed value; ``dict`` -> repeatable ``KEY=VALUE``; ``tuple[int, ...]`` -> ``A,B,..``; a nested config
dataclass (``nested=True``) -> its own options in place. A field without ``help`` is not on the command line.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, field, fields


def option(
    default=MISSING,
    help: str | None = None,
    *,
    choices=None,
    flag: str | None = None,  # noqa: A002
    metavar: str | None = None,
    group: str | None = None,
    required: bool = False,
    nested: bool = False,
    exclusive: str | None = None,
):
    """A dataclass field with its option. ``default`` may be a callable (then it is the default_factory:
    ``dict``, ``PrepConfig``). ``flag``: the option's name (default ``--field-name``); ``group``: the --help
    section; ``required``: the option must be given (the dataclass default serves Python callers);
    ``exclusive``: fields with the same name form a mutually exclusive group; ``nested``: a config dataclass
    whose own options are added."""
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "flag": flag,
        "metavar": metavar,
        "group": group,
        "required": required,
        "nested": nested,
        "exclusive": exclusive,
    }
    if callable(default) and not isinstance(default, (bool, int, float, str)):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _default(f):
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def _base_type(tp):
    """(type, optional): ``int | None`` -> (int, True); ``tuple[int, ...]`` -> (tuple, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])[0], True
        return str, True
    return (origin or tp), False


def cli_fields(cls):
    """(field, resolved type) of every field of ``cls`` that has a command-line option."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls) if f.metadata.get("help") or f.metadata.get("nested")]


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _kv_list(s: str) -> str:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    return s


def _int_tuple(s: str) -> tuple:
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _none_or(tp):
    def parse(s: str):
        return None if s.lower() == "none" else tp(s)

    parse.__name__ = tp.__name__
    return parse


def add_options(parser, cls, *, skip=(), sections: dict | None = None) -> None:
    """Add an option for every field of ``cls`` that has one (except ``skip``); --help sections are
    created per ``group`` (``sections`` caches them across calls)."""
    sections = {} if sections is None else sections
    exclusive: dict = {}
    for f, tp in cli_fields(cls):
        if f.name in skip:
            continue
        m = f.metadata
        if m.get("nested"):
            add_options(parser, tp, skip=skip, sections=sections)
            continue
        where = parser
        if m.get("group"):
            if m["group"] not in sections:
                sections[m["group"]] = parser.add_argument_group(m["group"])
            where = sections[m["group"]]
        if m.get("exclusive"):
            key = m["exclusive"]
            if key not in exclusive:
                exclusive[key] = where.add_mutually_exclusive_group(required=m.get("required", False))
            where = exclusive[key]
        base, optional = _base_type(tp)
        d = _default(f)
        # absent unless given (given_options tells them apart); the help states the dataclass default
        kw = {"dest": f.name, "help": m["help"], "default": argparse.SUPPRESS}
        if base is bool:
            kw.update(action=argparse.BooleanOptionalAction)
            kw["help"] += f" (default: {'on' if d else 'off'})"
        elif base is dict:
            kw.update(action="append", type=_kv_list, metavar=m.get("metavar") or "KEY=VALUE")
        elif base is tuple:
            kw.update(type=_int_tuple, metavar=m.get("metavar") or "A,B,..")
            kw["help"] += f" (default: {','.join(map(str, d))})"
        else:
            kw.update(type=_none_or(base) if optional and base is not str else base)
            if m.get("choices"):
                kw["choices"] = m["choices"]
            if m.get("metavar") or base in (int, float):
                kw["metavar"] = m.get("metavar") or ("N" if base is int else "X")
            if d is not None and not m.get("required"):
                kw["help"] += f" (default: {d})"
        if m.get("required") and not m.get("exclusive"):
            kw["required"] = True
        where.add_argument(flag_of(f), **kw)


def parse_kv(items: list[str], what: str) -> dict:
    """['k=v', ...] -> {k: JSON value of v (or the string)}; JSON lists become tuples."""
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"{what} expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
        if isinstance(out[k], list):
            out[k] = tuple(out[k])
    return out


def given_options(cls, args: argparse.Namespace) -> dict:
    """{field: value} of the options of ``cls`` given on the command line (KEY=VALUE lists as dicts; a
    nested config as its class, built from its given options)."""
    kw = {}
    for f, tp in cli_fields(cls):
        if f.metadata.get("nested"):
            kw[f.name] = tp(**given_options(tp, args))
        elif hasattr(args, f.name):
            v = getattr(args, f.name)
            kw[f.name] = parse_kv(v, flag_of(f)) if _base_type(tp)[0] is dict else v
    return kw


def options_from_args(cls, args: argparse.Namespace, **overrides):
    """``cls`` built from the given options, the dataclass defaults for the others, ``overrides`` on top."""
    return cls(**{**given_options(cls, args), **overrides})


def check_choices(obj) -> list[str]:
    """Messages for every field with ``choices`` whose value is not one of them (None allowed when the
    default is None)."""
    errs = []
    for f in fields(obj):
        ch = f.metadata.get("choices")
        v = getattr(obj, f.name)
        if ch and v not in ch and not (v is None and _default(f) is None):
            errs.append(f"{f.name} must be one of {', '.join(map(str, ch))}; got {v!r}")
    return errs

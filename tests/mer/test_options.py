"""mer.options: a config dataclass's fields make its command line; parsing gives the dataclass back."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from mer.options import add_options, check_choices, option, options_from_args


@dataclass(frozen=True)
class Inner:
    steps: int = option(3, "inner steps")


@dataclass(frozen=True)
class Demo:
    epochs: int = option(30, "epoch budget", group="optimisation")
    lr: float = option(1e-3, "learning rate", group="optimisation")
    mode: str = option("fixed", "how", choices=("fixed", "val"))
    name: str | None = option(None, "optional name")
    limit: float | None = option(None, "optional number")
    flag: bool = option(False, "a switch")
    on: bool = option(True, "on by default")
    extra: dict = option(dict, "overrides", flag="--extra-arg")
    sizes: tuple = option((1, 2), "sizes")
    inner: Inner = option(Inner, nested=True)
    hidden: int = 7  # no option


def parse(argv):
    p = argparse.ArgumentParser()
    add_options(p, Demo)
    return options_from_args(Demo, p.parse_args(argv))


def test_defaults_round_trip():
    assert parse([]) == Demo()


def test_every_kind_of_option():
    d = parse(
        [
            "--epochs",
            "5",
            "--lr",
            "0.5",
            "--mode",
            "val",
            "--name",
            "x",
            "--limit",
            "none",
            "--flag",
            "--no-on",
            "--extra-arg",
            "a=1",
            "--extra-arg",
            "b=[1,2]",
            "--extra-arg",
            "c=text",
            "--sizes",
            "4,5,6",
            "--steps",
            "9",
        ]
    )
    assert d == Demo(
        epochs=5,
        lr=0.5,
        mode="val",
        name="x",
        limit=None,
        flag=True,
        on=False,
        extra={"a": 1, "b": (1, 2), "c": "text"},
        sizes=(4, 5, 6),
        inner=Inner(9),
    )
    assert parse(["--limit", "0.25"]).limit == 0.25


def test_bad_values_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse(["--mode", "best"])
    assert "invalid choice: 'best'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--extra-arg", "novalue"])
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--hidden", "1"])


def test_check_choices_names_the_field():
    assert check_choices(Demo()) == []
    object.__setattr__(bad := Demo(), "mode", "best")
    assert check_choices(bad) == ["mode must be one of fixed, val; got 'best'"]


def test_help_shows_groups_and_defaults(capsys):
    p = argparse.ArgumentParser()
    add_options(p, Demo)
    p.print_help()
    out = capsys.readouterr().out
    assert "optimisation:" in out and "epoch budget (default: 30)" in out and "--no-on" in out


def test_train_config_is_its_command_line():
    """Every TrainConfig field except the nested preprocessing config has an option; the parsed defaults
    are TrainConfig's defaults."""
    from mer.cli import build_parser
    from mer.cli.train import config_from_args
    from mer.train import TrainConfig

    args = build_parser().parse_args(["train", "--out", "runs/x"])
    assert config_from_args(args) == TrainConfig(out="runs/x")
    with_option = {f.name for f in fields(TrainConfig) if f.metadata.get("help")}
    assert with_option == {f.name for f in fields(TrainConfig)} - {"prep"}
    cfg = config_from_args(build_parser().parse_args(["train", "--out", "o", "--preset", "release", "--epochs", "3"]))
    assert cfg == TrainConfig.from_preset("release", epochs=3, out="o")
    cfg = config_from_args(
        build_parser().parse_args(
            [
                "train",
                "--out",
                "o",
                "--selection",
                "val",
                "--model-arg",
                "dropout=0.1",
                "--no-deterministic",
                "--cache",
                "c",
                "--flow",
                "dis",
            ]
        )
    )
    assert (cfg.selection, cfg.model_kwargs, cfg.deterministic, cfg.cache_dir, cfg.prep.flow) == (
        "val",
        {"dropout": 0.1},
        False,
        "c",
        "dis",
    )


def test_prune_and_augment_command_lines_are_their_configs():
    from mer.augment import DDPMConfig
    from mer.cli import build_parser
    from mer.esaat import ESAATConfig, FinetuneConfig

    p = build_parser()
    args = p.parse_args(["prune", "--run", "r", "--remove", "2"])
    assert options_from_args(ESAATConfig, args) == ESAATConfig(remove=2)
    got = options_from_args(
        ESAATConfig,
        p.parse_args(
            [
                "prune",
                "--run",
                "r",
                "--budget",
                "0.8",
                "--no-convert",
                "--epochs",
                "4",
                "--fade-epochs",
                "1",
                "--calib",
                "8",
            ]
        ),
    )
    assert got == ESAATConfig(budget=0.8, convert=False, calib_size=8, finetune=FinetuneConfig(epochs=4, fade_epochs=1))
    with pytest.raises(SystemExit):  # exactly one of --remove / --budget / --flops-budget
        p.parse_args(["prune", "--run", "r", "--remove", "1", "--budget", "0.5"])
    args = p.parse_args(["augment", "--toy", "--out", "o", "--channel-mults", "1,2", "--ema-decay", "none"])
    assert options_from_args(DDPMConfig, args) == DDPMConfig(channel_mults=(1, 2), ema_decay=None)

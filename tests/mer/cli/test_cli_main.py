"""`mer` itself: every command registers, and a command whose module fails to import is shown, not dropped."""

from __future__ import annotations

import pytest

import mer.cli
from mer.cli import COMMANDS, build_parser, main


def _registered(parser):
    (sub,) = parser._subparsers._group_actions  # the one add_subparsers() action
    return sub.choices, {a.dest: a.help for a in sub._choices_actions}


def test_every_command_loads():
    choices, helps = _registered(build_parser())
    assert list(choices) == list(COMMANDS)
    unavailable = {name: h for name, h in helps.items() if h and h.startswith("UNAVAILABLE")}
    assert not unavailable, unavailable


def test_a_command_that_fails_to_import_is_listed_with_its_error(monkeypatch, capsys):
    monkeypatch.setattr(mer.cli, "COMMANDS", {**COMMANDS, "broken": "mer.cli._no_such_module"})
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help column
    assert "broken" in out and "UNAVAILABLE (cannot load mer.cli._no_such_module: ModuleNotFoundError" in out
    assert "synth" in out  # the other commands are still offered
    assert main(["broken", "--some", "option"]) == 1
    err = capsys.readouterr().err
    assert "mer broken: error: cannot load mer.cli._no_such_module: ModuleNotFoundError: No module named" in err

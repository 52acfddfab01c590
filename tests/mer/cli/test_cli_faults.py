"""Faulty data rows through `mer train` (tests/mer/data and tests/mer/preprocess cover them in the loaders
and in `mer prepare`): a coding sheet without a required column, and a sample list naming a clip that is not
on disk. Each is one `mer train: error:` line (exit 2) that names the problem, and nothing is written.
No training runs here: both stop while the data loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import openpyxl
import pytest

from mer.cli import main


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """`mer synth --preset tiny` (only the files are read here)."""
    from mer.synth.config import SynthConfig
    from mer.synth.generate import generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate(SynthConfig(preset="tiny", seed=0), out, progress=False)
    return out


def train(data, tmp_path, capsys, *extra):
    rc = main(
        [
            "train",
            "--data",
            str(data),
            "--model",
            "htnet_tiny",
            "--size",
            "16",
            "--flow",
            "farneback",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            *extra,
        ]
    )
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("mer train: error:")]
    return rc, errors, cap.err


def test_train_names_a_missing_annotation_column(synth, tmp_path, capsys):
    data = Path(shutil.copytree(synth, tmp_path / "data"))
    sheet = data / "casme2" / "CASME2-coding-20140508.xlsx"
    wb = openpyxl.load_workbook(sheet)
    ws = wb.active
    header = next(r for r in ws.iter_rows(min_row=1, max_row=20) if any(c.value == "ApexFrame" for c in r))
    col = next(c.column for c in header if c.value == "ApexFrame")
    ws.delete_cols(col)
    wb.save(sheet)
    rc, errors, _ = train(data, tmp_path, capsys)
    assert rc == 2 and len(errors) == 1
    assert "has no column for 'apex'" in errors[0] and sheet.name in errors[0]
    rc, errors, _ = train(data, tmp_path, capsys, "--on-error", "warn")  # not a per-sample problem: still an error
    assert rc == 2 and "has no column for 'apex'" in errors[0]
    assert not (tmp_path / "run" / "folds").exists()


def test_train_names_a_listed_clip_missing_on_disk(synth, tmp_path, capsys):
    data = Path(shutil.copytree(synth, tmp_path / "data"))
    clip = next((data / "smic").rglob("s*_*_*"))
    shutil.rmtree(clip)
    rc, errors, err = train(data, tmp_path, capsys)
    assert rc == 2 and len(errors) == 1
    assert "1 problem(s) in 1 sample(s)" in errors[0] and "not-in-data" in errors[0]
    assert "s02_ne_01" in err and "--on-error warn" in err
    assert "point --data (or --casme2/--samm/--smic, --root) at the right place" in err and "--annotation" not in err
    assert not (tmp_path / "run" / "folds").exists()


def test_train_missing_apex_and_errata_options(synth, tmp_path, capsys):
    """The tiny composite has two rows without an apex: by default a warning that names the CLI option
    (not the API's missing_apex='error'); --missing-apex error refuses them with one error naming them;
    --annotation and --errata mistakes are one-line errors too. Nothing trains here."""
    import warnings

    from mer.cli.prepare import plain_warnings
    from mer.train import TrainConfig
    from mer.train.data import load_samples

    saved = warnings.showwarning
    try:
        plain_warnings()  # what `mer train` shows the loaders' warnings with
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # shown although another test already triggered it
            assert len(load_samples(TrainConfig(data=str(synth), out=str(tmp_path / "x")))) == 18
    finally:
        warnings.showwarning = saved
    err = capsys.readouterr().err
    assert "sub01/EP03_02. Pass --missing-apex error to refuse them instead." in err and "missing_apex=" not in err
    rc, errors, err = train(synth, tmp_path, capsys, "--missing-apex", "error")
    assert rc == 2 and len(errors) == 1 and "(missing-apex: 2)" in errors[0]
    assert "sub01/EP03_02" in err and "--missing-apex estimate" in err
    assert not (tmp_path / "run" / "folds").exists()
    rc, errors, _ = train(synth, tmp_path, capsys, "--annotation", str(tmp_path / "sheet.xlsx"))
    assert rc == 2 and "--annotation is for a single dataset" in errors[0]
    rc, errors, err = train(synth, tmp_path, capsys, "--errata", str(tmp_path / "no_table.csv"))
    assert rc == 2 and len(errors) == 1 and "no_table.csv" in errors[0] and "--errata none" in errors[0]

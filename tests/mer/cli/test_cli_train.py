"""End to end through the command line: mer synth --preset tiny -> mer train (a *_tiny model, 2 epochs)
-> mer evaluate -> mer predict (a synthetic clip; an image without a face)."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

TINY_MODEL = "htnet_tiny"  # a registered mer.models variant that trains in seconds


def mer(args, env, timeout=180):
    p = subprocess.run([sys.executable, "-m", "mer", *args], env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def mer_inproc(args, capsys):
    from mer.cli import main

    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(synthetic data dir, run dir): the CLI pipeline run once for this module."""
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    tmp = tmp_path_factory.mktemp("cli")
    data, run = tmp / "synth", tmp / "run"
    rc, out, err = mer(["synth", "--out", str(data), "--preset", "tiny", "--seed", "0"], env)
    assert rc == 0, err[-2000:]
    rc, out, err = mer(
        [
            "train",
            "--data",
            str(data),
            "--protocol",
            "loso",
            "--model",
            TINY_MODEL,
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--flow",
            "farneback",
            "--size",
            "16",
            "--cache",
            str(tmp / "cache"),
            "--out",
            str(run),
        ],
        env,
    )
    assert rc == 0, out[-2000:] + err[-3000:]
    assert "| composite (all) | 18 |" in out
    return data, run


@pytest.mark.slow
def test_train_writes_the_run_directory(tiny_run):
    _, run = tiny_run
    for name in (
        "config.json",
        "samples.csv",
        "folds.json",
        "predictions.csv",
        "metrics.json",
        "megc_log.txt",
        "summary.md",
        "confusion.png",
        "learning_curves.png",
    ):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["scores"]) == {"all", "casme2", "samm", "smic"} and m["n"] == 18 and m["folds"] == 6
    assert 0.0 <= m["scores"]["all"]["uf1"] <= 1.0
    log = (run / "megc_log.txt").read_text().splitlines()
    assert sum(1 for line in log if len(line.split()) == 2) == 6  # one header per held-out subject
    assert sum(1 for line in log if len(line.split()) == 3) == 18
    folds = sorted((run / "folds").iterdir())
    assert len(folds) == 6 and all((f / "model.pt").is_file() and not (f / "last.pt").exists() for f in folds)
    import torch

    ck = torch.load(folds[0] / "model.pt", weights_only=True)
    assert ck["config"]["epochs"] == 2 and ck["input"] == "regions" and len(ck["norm_mean"]) == 3
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["prep"]["flow"] == "farneback" and cfg["selection"] == "fixed"


@pytest.mark.slow
def test_evaluate_recomputes_the_same_metrics(tiny_run, capsys):
    _, run = tiny_run
    before = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    (run / "confusion.png").unlink()
    rc, out, err = mer_inproc(["evaluate", str(run)], capsys)
    assert rc == 0, err
    after = json.loads((run / "metrics.json").read_text())
    assert after["scores"] == before["scores"] and (run / "confusion.png").is_file()
    assert "| casme2 | 6 |" in out
    rc, out, err = mer_inproc(["evaluate", str(run.parent)], capsys)
    assert rc == 2 and "not a `mer train` run directory" in err


@pytest.mark.slow
def test_a_changed_config_is_refused(tiny_run, capsys):
    data, run = tiny_run
    rc, out, err = mer_inproc(
        [
            "train",
            "--data",
            str(data),
            "--model",
            TINY_MODEL,
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--flow",
            "farneback",
            "--size",
            "16",
            "--out",
            str(run),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 2 and "different config" in err and "epochs: 2 -> 3" in err and "--force" in err


@pytest.mark.slow
def test_predict_a_synthetic_clip(tiny_run, capsys):
    data, run = tiny_run
    clip = next((data / "casme2").glob("CASME2_RAW_selected/sub01/*"))
    fold = sorted((run / "folds").iterdir())[0]
    rc, out, err = mer_inproc(
        ["predict", "--checkpoint", str(fold / "model.pt"), "--clip", str(clip), "--json"], capsys
    )
    assert rc == 0, err
    res = json.loads(out)
    probs = res["probabilities"]
    assert set(probs) == {"negative", "positive", "surprise"}
    assert abs(sum(probs.values()) - 1) < 1e-5 and res["prediction"] == max(probs, key=probs.get)
    frames = sorted(clip.iterdir(), key=lambda p: int("".join(c for c in p.stem if c.isdigit())))
    rc, out2, err = mer_inproc(
        [
            "predict",
            "--checkpoint",
            str(run),
            "--onset",
            str(frames[0]),
            "--apex",
            str(frames[len(frames) // 2]),
            "--json",
        ],
        capsys,
    )
    assert rc == 0, err
    assert json.loads(out2)["models"] == 6


@pytest.mark.slow
def test_predict_reports_no_face_and_unreadable_images(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    noface = tmp_path / "wall.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(noface), (rng.random((240, 320)) * 30 + 110).astype(np.uint8))
    fold = sorted((run / "folds").iterdir())[0]
    rc, out, err = mer_inproc(
        ["predict", "--checkpoint", str(fold), "--onset", str(noface), "--apex", str(noface)], capsys
    )
    assert rc == 2 and "no face found" in err and "--cropped" in err
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    rc, out, err = mer_inproc(
        ["predict", "--checkpoint", str(fold), "--onset", str(bad), "--apex", str(noface)], capsys
    )
    assert rc == 2 and "cannot read image" in err
    rc, out, err = mer_inproc(
        ["predict", "--checkpoint", str(tmp_path), "--onset", str(noface), "--apex", str(noface)], capsys
    )
    assert rc == 2 and "no checkpoint" in err


def test_help_has_examples(capsys):
    from mer.cli import build_parser

    parser = build_parser()
    for cmd in ("train", "evaluate", "predict"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_bad_data_or_model_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = mer_inproc(["train", "--data", str(tmp_path / "nowhere"), "--out", str(out)], capsys)
    assert rc == 2 and "expected a `mer synth` output" in err and "mer synth --out" in err
    rc, _, err = mer_inproc(["train", "--out", str(out)], capsys)
    assert rc == 2 and "no data" in err
    rc, _, err = mer_inproc(["train", "--data", "a", "--casme2", "b", "--out", str(out)], capsys)
    assert rc == 2 and "one data source" in err
    for d in ("casme2", "samm", "smic"):
        (tmp_path / "fake" / d).mkdir(parents=True)
    (tmp_path / "fake" / "megc2019_composite.csv").write_text("dataset,subject,clip,label\n")
    rc, _, err = mer_inproc(
        ["train", "--data", str(tmp_path / "fake"), "--model", "no_such_model", "--out", str(out)], capsys
    )
    assert rc == 2 and "model 'no_such_model'" in err
    assert not out.exists()

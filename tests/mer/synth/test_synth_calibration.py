"""Calibration statistics (mer.synth.calibrate) on constructed maps, and the synthetic source of the linear
floor end to end on the tiny synthetic set (prepared like `mer train --data` prepares it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mer.baselines.sources import minmax_per_image, to_uvs
from mer.synth.calibrate import class_mean_maps, compare_patterns, describe, image_stats, separability


def test_image_stats_tell_a_clean_spot_from_noise():
    rng = np.random.default_rng(0)
    spot = np.full((1, 3, 28, 28), 128.0) + rng.normal(scale=2.0, size=(1, 3, 28, 28))
    spot[0, :, 10:13, 10:13] = 255.0  # 9 of 784 pixels move
    noise = rng.normal(128.0, 40.0, size=(1, 3, 28, 28))
    a, b = image_stats(spot), image_stats(noise)
    assert (a["peak_z"] > 30).all() and (b["peak_z"] < 6).all()
    np.testing.assert_allclose(a["active"], 9 / 784)
    assert (b["active"] > 0.2).all()
    np.testing.assert_allclose(a["level"], 128.0, atol=1.0)
    rows, cols = np.mgrid[0:28, 0:28]
    plane = np.broadcast_to(3.0 * cols - 2.0 * rows + 7.0, (1, 3, 28, 28))  # pure global motion
    np.testing.assert_allclose(image_stats(plane)["affine_r2"], 1.0)
    assert (a["affine_r2"] < 0.05).all() and (b["affine_r2"] < 0.05).all()


def test_separability_finds_class_and_subject_pixels():
    rng = np.random.default_rng(1)
    n = 300
    y = np.arange(n) % 3
    groups = np.repeat(np.arange(30), 10)
    x = rng.normal(size=(n, 3, 4, 4))
    x[:, 0, 0, 0] += 3.0 * y  # a class pixel
    x[:, 1, 1, 1] += 3.0 * rng.normal(size=30)[groups]  # a subject pixel
    s = separability(x, y, groups)
    assert s["F"][0, 0, 0] > 100 and np.median(s["F"]) < 3
    assert s["class_eta2"][0, 0, 0] > 0.8 and s["class_eta2"][2].max() < 0.1
    assert s["subject_eta2"][1, 1, 1] > 0.8
    # 30 subjects of 10 pure-noise samples: the subject share of a noise pixel is about 29/299
    assert abs(np.median(s["subject_eta2"]) - 29 / 299) < 0.05


def test_class_mean_maps_are_centred_and_patterns_compare():
    rng = np.random.default_rng(2)
    x = rng.normal(100.0, 1.0, size=(30, 3, 6, 6))
    y = np.arange(30) % 3
    x[y == 1, 0, 2, 2] += 50.0
    m = class_mean_maps(x, y)
    assert m.shape == (3, 3, 6, 6) and abs(m[0].mean()) < 1.0 and m[1, 0, 2, 2] > 45
    pc = compare_patterns(m, m)
    assert len(pc) == 9 and all(v == pytest.approx(1.0) for v in pc.values())


def test_minmax_and_channel_order():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    x[1, 2] = 7.0  # a constant map -> 0
    mm = minmax_per_image(x)
    assert mm[0].min() == 0 and mm[0].max() == 255 and (mm[1, 2] == 0).all()
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 1, 2, 3  # cv2 order of the release: strain, v, u
    np.testing.assert_array_equal(to_uvs(img)[0, :, 0, 0], [3, 2, 1])  # -> u, v, strain


def test_synth_source_and_floor_end_to_end(tiny, tmp_path):
    from mer.baselines import cli
    from mer.baselines.sources import synth_features

    out, _, _ = tiny
    cache = tmp_path / "cache"
    fs = synth_features(out, ["flow", "tiles"], flow="dis", cache_dir=cache, progress=False)
    n = len(fs.y)
    assert fs.x["flow"].shape == (n, 3, 28, 28) and fs.x["tiles"].shape == (n, 3, 28, 28)
    assert set(fs.y) == {0, 1, 2} and set(fs.datasets) == {"casme2", "samm", "smic"}
    assert len(set(zip(fs.datasets, fs.subjects, strict=True))) == 6
    assert not np.array_equal(fs.x["flow"], fs.x["tiles"])
    mm = synth_features(out, ["flow"], flow="dis", cache_dir=cache, scale="minmax", progress=False)
    assert mm.x["flow"].min() >= 0 and mm.x["flow"].max() <= 255
    d = describe(mm.x["flow"], mm.y, mm.datasets, mm.subjects, x_raw=fs.x["flow"])
    assert d["n"] == n and "casme2/negative" in d["per_dataset_class"]
    assert d["per_dataset_class"]["casme2/negative"]["raw_mean_abs"]["u"] > 0
    rc = cli.main(
        [
            "--synth",
            str(out),
            "--flow",
            "dis",
            "--cache",
            str(cache),
            "--input",
            "flow,tiles",
            "--protocol",
            "loso,holdout-dataset",
            "--out",
            str(tmp_path / "floor"),
            "--no-progress",
        ]
    )
    assert rc == 0
    rep = json.loads((tmp_path / "floor" / "linear_floor.json").read_text())
    assert rep["source"]["kind"] == "synth" and rep["source"]["prep"]["flow"] == "dis"
    assert [(r["input"], r["protocol"], r["runs"][0]["n_folds"]) for r in rep["results"]] == [
        ("flow", "loso", 6),
        ("flow", "holdout-dataset", 3),
        ("tiles", "loso", 6),
        ("tiles", "holdout-dataset", 3),
    ]


def test_default_difficulty_is_the_calibrated_level():
    import argparse

    from mer.cli import synth as synth_cli
    from mer.synth.config import DEFAULT_DIFFICULTY, DIFFICULTY_NAMES, SynthConfig

    assert DEFAULT_DIFFICULTY == "calibrated" and SynthConfig().level.d == DIFFICULTY_NAMES["calibrated"]
    assert DIFFICULTY_NAMES["easy"] < DIFFICULTY_NAMES["calibrated"] < DIFFICULTY_NAMES["hard"]
    sub = argparse.ArgumentParser().add_subparsers()
    args = synth_cli.add_parser(sub).parse_args(["--out", "x"])
    assert args.difficulty == DEFAULT_DIFFICULTY  # `mer synth` without --difficulty = the library default

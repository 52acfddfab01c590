"""`mer augment` end to end at a tiny size."""

import json

import numpy as np
import pytest

from mer.cli import main


@pytest.mark.slow
def test_mer_augment_writes_samples_report_and_grid(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0] * 12 + [1] * 5)
    x = (rng.normal(size=(17, 3, 8, 8)) + y[:, None, None, None]).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "out"
    rc = main(
        [
            "augment",
            "--data",
            str(tmp_path / "d.npz"),
            "--out",
            str(out),
            "--no-progress",
            "--base-channels",
            "4",
            "--channel-mults",
            "1,2",
            "--emb-dim",
            "16",
            "--timesteps",
            "50",
            "--train-steps",
            "10",
            "--batch-size",
            "8",
            "--sample-steps",
            "4",
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    assert rc == 0
    g = np.load(out / "generated.npz")
    assert g["x"].shape == (7, 3, 8, 8) and (g["y"] == 1).all() and g["generated"].all()
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_generated"] == 7 and rep["overall"]["nn_gen_to_train"]["n"] == 7
    assert (out / "grid.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["train_steps"] == 10
    assert "nearest" in (out / "report.md").read_text().lower()


def test_mer_augment_explains_bad_npz(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 3, 8, 8)))
    with pytest.raises(SystemExit, match="lacks key"):
        main(["augment", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o")])


def test_toy_set_shape_and_classes():
    from mer.augment.toy import toy_flow_set

    x, y = toy_flow_set(counts=(5, 3, 2), size=14, seed=1)
    assert x.shape == (10, 3, 14, 14) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [5, 3, 2]
    np.testing.assert_allclose(x.mean((0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std((0, 2, 3)), 1, atol=1e-4)


def test_bad_ratio_is_explained(tmp_path):
    with pytest.raises(SystemExit, match="--ratio"):
        main(["augment", "--toy", "--out", str(tmp_path / "o"), "--ratio", "lots"])

"""mer.io: atomic writes leave the old file on failure; the predictions CSV round-trips."""

import json

import numpy as np
import pytest

from mer.io import (
    PREDICTION_COLUMNS,
    atomic_write,
    atomic_write_json,
    prediction_rows,
    read_predictions,
    write_predictions,
)
from mer.labels import LABEL_NAMES


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    p = tmp_path / "a" / "f.json"
    atomic_write_json(p, {"x": np.int64(3), "y": np.arange(2), "z": np.float32(0.5)})
    assert json.loads(p.read_text()) == {"x": 3, "y": [0, 1], "z": 0.5}

    def boom(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(p, boom)
    assert json.loads(p.read_text())["x"] == 3
    assert [q.name for q in p.parent.iterdir()] == ["f.json"]  # no temporary file left


def test_predictions_round_trip(tmp_path):
    probs = np.array([[0.2, 0.5, 0.3], [0.7, 0.2, 0.1]], np.float32)
    rows = prediction_rows([4, 9], [("casme2", "sub01", "EP1"), ("smic", "s2", "c")], [1, 2], probs)
    assert [r.pred for r in rows] == [1, 0]
    write_predictions(tmp_path / "p.csv", rows)
    head = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert head.split(",") == list(PREDICTION_COLUMNS) and head.endswith(",".join(f"p_{n}" for n in LABEL_NAMES))
    back = read_predictions(tmp_path / "p.csv")
    assert [r[:6] for r in back] == [r[:6] for r in rows]
    assert np.allclose([r.probs for r in back], probs, atol=1e-6)

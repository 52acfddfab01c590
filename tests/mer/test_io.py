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


def _write_forever(path):  # a writer that never finishes (killed by the test)
    import time

    from mer.io import atomic_write

    def write(f):
        f.write(b"partial")
        f.flush()
        while True:
            time.sleep(1)

    atomic_write(path, write)


def test_a_killed_writer_s_temporary_file_is_found_by_its_pid(tmp_path):
    """SIGKILL leaves the temporary file of an atomic write (no handler runs); the process that killed the
    writer removes it by pid, and only it: another writer's file in the same folder stays."""
    import multiprocessing as mp
    import time

    from mer.io import remove_writes_of

    target = tmp_path / "ab" / "entry.npz"
    other = tmp_path / "ab" / ".entry.npz.0.x.tmp"  # another writer's (pid 0 is never the killed one)
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")
    proc = mp.get_context("spawn").Process(target=_write_forever, args=(target,))
    proc.start()
    deadline = time.monotonic() + 30
    while not list((tmp_path / "ab").glob(f".entry.npz.{proc.pid}.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.join(10)
    assert len(list((tmp_path / "ab").glob(f".entry.npz.{proc.pid}.*.tmp"))) == 1  # left behind
    assert remove_writes_of(proc.pid, tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "ab").iterdir()) == [other.name] and not target.exists()


def test_remove_temp_files_by_age_and_by_writer(tmp_path):
    """The cache's stale-file sweep (any writer, older than the limit) and the kill clean-up (one writer, any
    age) are one function; completed files and other folders' files are never touched."""
    import os
    import time

    from mer.io import remove_temp_files
    from mer.preprocess.cache import Cache

    folder = tmp_path / "ab"
    folder.mkdir()
    old_a, new_a, old_b = (folder / n for n in (".x.npz.11.q.tmp", ".y.npz.11.r.tmp", ".z.npz.22.s.tmp"))
    kept = [folder / "x.npz", tmp_path / ".top.11.t.tmp"]  # a finished entry; not one level under the folder
    for p in (old_a, new_a, old_b, *kept):
        p.write_bytes(b"")
    hour_ago = time.time() - 7200
    for p in (old_a, old_b):
        os.utime(p, (hour_ago, hour_ago))
    assert remove_temp_files(tmp_path / "missing") == 0
    assert Cache(tmp_path).remove_stale_temp(max_age_s=3600) == 2  # old_a and old_b, whoever wrote them
    assert sorted(p.name for p in folder.iterdir()) == sorted([new_a.name, "x.npz"])
    assert remove_temp_files(tmp_path, pid=22) == 0 and remove_temp_files(tmp_path, pid=11) == 1
    assert [p.name for p in folder.iterdir()] == ["x.npz"] and all(p.exists() for p in kept)

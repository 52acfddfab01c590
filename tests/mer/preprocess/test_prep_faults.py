"""Fault injection in preprocessing and `mer prepare`: damaged frames, a cache entry copied over
another key, `--check`, user errors, Ctrl-C with workers. Each case: a one-line message naming the
problem, the exit status, nothing lost, no wrong number."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from prep_fault_fixtures import frame, make_casme2_crops, make_samm_row

from mer.cli import main
from mer.data import load_dataset
from mer.preprocess import PrepConfig, PrepError, prepare

FAST = PrepConfig(size=14, face_size=56, flow="dis", regions="canonical")
CLI_FAST = ["--flow", "dis", "--size", "14", "--face-size", "56", "--no-progress"]


@pytest.fixture
def root(tmp_path):
    return make_casme2_crops(tmp_path / "casme2", n=4)


def samples_of(root):
    return load_dataset("casme2", root)


def cut_to_a_third(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def err_lines(capsys):
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return [ln for ln in cap.err.splitlines() if ln.startswith("error:")], cap


# ------------------------------------------------------------------------------- damaged frames


def test_truncated_apex_is_refused_not_used(root, tmp_path):
    clean = prepare(samples_of(root), FAST, tmp_path / "clean", progress=False)
    cut_to_a_third(frame(root, 2, 2))  # sub02's apex, cut as a partly written file would be
    with pytest.raises(PrepError) as e:
        prepare(samples_of(root), FAST, tmp_path / "c", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "casme2/sub02/EP01_01" in msg
    assert f"{frame(root, 2, 2)}: truncated JPEG" in msg and "on_error='warn'" in msg
    with pytest.warns(RuntimeWarning, match=r"sub02/EP01_01 .*truncated JPEG.*Excluded"):
        ps = prepare(samples_of(root), FAST, tmp_path / "c", progress=False, on_error="warn")
    assert [s.subject for s in ps.samples] == ["sub01", "sub03", "sub04"] and len(ps.failed) == 1
    keep = [0, 2, 3]  # the others: exactly the clean run's numbers
    np.testing.assert_array_equal(ps.face, clean.face[keep])
    np.testing.assert_array_equal(ps.regions, clean.regions[keep])


def test_cli_damaged_frame_one_line_and_warn(root, tmp_path, capsys):
    frame(root, 3, 1).write_bytes(b"")  # zero-byte onset
    args = ["prepare", "--dataset", "casme2", "--root", str(root), "--out", str(tmp_path / "c"), *CLI_FAST]
    assert main(args) == 2
    errors, _ = err_lines(capsys)
    assert len(errors) == 1 and "sub03/EP01_01" in errors[0] and "zero-byte file" in errors[0]
    assert "--on-error warn" in errors[0]
    assert main(args + ["--on-error", "warn"]) == 0
    cap = capsys.readouterr()
    assert "prepared 3 samples" in cap.out and "(1 excluded)" in cap.out
    assert "zero-byte file" in cap.err


# ------------------------------------------------------------------------------------- the cache


def test_entry_copied_over_another_key_is_refused(root, tmp_path):
    samples = samples_of(root)
    first = prepare(samples, FAST, tmp_path / "c", progress=False)
    keys = [m["cache_key"] for m in first.meta]

    def entry(k):
        return tmp_path / "c" / k[:2] / f"{k}.npz"

    shutil.copyfile(entry(keys[0]), entry(keys[1]))  # a valid entry, under the wrong name
    assert not np.array_equal(first.face[0], first.face[1])
    with pytest.warns(RuntimeWarning, match=r"belongs to another key .*recomputing") as rec:
        again = prepare(samples, FAST, tmp_path / "c", progress=False)
    assert len([w for w in rec if "another key" in str(w.message)]) == 1
    assert all("\n" not in str(w.message) for w in rec)
    np.testing.assert_array_equal(again.face, first.face)  # sample 1 got its own flow back
    with np.load(entry(keys[1])) as z:
        assert str(z["key"]) == keys[1]  # and its entry is its own again


def test_interrupted_pool_leaves_no_partial_entry(root, tmp_path):
    """A worker terminated while writing: only whole entries (each with its own key), no temp files."""
    import mer.io as io_mod
    import mer.preprocess.cache as cache_mod

    samples = samples_of(root)
    c = cache_mod.Cache(tmp_path / "c")
    face = np.zeros((3, 14, 14), np.float32)
    c.save("ab" * 32, face, face, {})
    assert io_mod._WRITING is None  # a finished write leaves nothing registered
    # what a terminated writer leaves: remove_unfinished_write deletes the temp file being written
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=c.root / "ab", prefix=".abababab.", suffix=".tmp")
    os.close(fd)
    io_mod._WRITING = tmp
    cache_mod.remove_unfinished_write()
    io_mod._WRITING = None
    assert not os.path.exists(tmp) and c.load("ab" * 32) is not None
    assert prepare(samples, FAST, tmp_path / "c", progress=False).face.shape == (4, 3, 14, 14)


# --------------------------------------------------------------------------------------- --check


def test_check_finds_bad_frames_the_pipeline_never_reads(root, tmp_path, capsys):
    frame(root, 1, 3).write_bytes(b"")  # offset frame: prepare reads only onset and apex
    cut_to_a_third(frame(root, 4, 3))
    args = ["prepare", "--dataset", "casme2", "--root", str(root), "--out", str(tmp_path / "c"), *CLI_FAST]
    assert main(args) == 0  # not noticed by preprocessing ...
    capsys.readouterr()
    assert main(["prepare", "--dataset", "casme2", "--root", str(root), "--check", "--no-progress"]) == 1
    out = capsys.readouterr().out  # ... but by --check
    assert "checked 12 frames in 4 clip folders: 2 bad" in out
    assert f"{frame(root, 1, 3)}: zero-byte file" in out
    assert f"{frame(root, 4, 3)}: truncated JPEG" in out


def test_check_clean_dataset(root, capsys):
    assert (
        main(["prepare", "--dataset", "casme2", "--root", str(root), "--check", "--no-progress", "--workers", "2"]) == 0
    )
    assert "checked 12 frames in 4 clip folders: all read completely" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- user errors


def test_cli_user_errors_are_one_line(root, tmp_path, capsys, monkeypatch):
    base = ["prepare", "--dataset", "casme2", *CLI_FAST]
    out = str(tmp_path / "c")
    (tmp_path / "afile").write_text("x")
    cases = [
        (base + ["--root", str(tmp_path / "nope"), "--out", out], "root .*nope is not a folder"),
        (base + ["--root", str(root), "--out", str(tmp_path / "afile")], "is a file, not a folder"),
        (
            base + ["--root", str(root), "--out", str(tmp_path / "afile" / "sub")],
            "is a file, not a folder|cannot write",
        ),
        (base + ["--root", str(root)], "--out is required"),
        (base + ["--root", str(root), "--out", out, "--size", "7"], "size must be an even number"),
        (
            base + ["--root", str(root), "--out", out, "--errata", str(tmp_path / "none.csv")],
            "cannot read the errata table",
        ),
    ]
    for argv, pattern in cases:
        assert main(argv) == 2, argv
        errors, cap = err_lines(capsys)
        assert len(errors) == 1 and re.search(pattern, errors[0]), (argv, cap.err)
    # a dataset error (a frame missing on disk): the problem, with the way on
    frame(root, 2, 3).unlink()
    assert main(base + ["--root", str(root), "--out", out]) == 2
    errors, cap = err_lines(capsys)
    assert "1 problem(s) in 1 sample(s)" in errors[0] and "missing on disk" in cap.err and "--on-error warn" in cap.err
    assert "--root/--annotation" in cap.err
    # --root missing: argparse-level one line (exit 1)
    with pytest.raises(SystemExit, match="needs --root"):
        main(base + ["--out", out])


def test_cli_unwritable_out(root, tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # (tests run as root: chmod would not stop us)
    assert main(["prepare", "--dataset", "casme2", "--root", str(root), "--out", str(tmp_path / "c"), *CLI_FAST]) == 2
    errors, _ = err_lines(capsys)
    assert len(errors) == 1 and "cannot write to --out" in errors[0] and "Permission denied" in errors[0]


def test_cli_errata_option(tmp_path, capsys):
    root = make_samm_row(tmp_path / "samm", 28, "028_4_1", 1100, 1143, 1134)
    args = [
        "prepare",
        "--dataset",
        "samm",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "c"),
        *CLI_FAST,
        "--face",
        "full",
    ]
    assert main(args) == 0
    cap = capsys.readouterr()
    notes = [ln for ln in cap.err.splitlines() if "errata" in ln]
    assert len(notes) == 1 and "028/028_4_1 apex 1143 -> 1117" in notes[0] and "prepared 1 samples" in cap.out
    with np.load(tmp_path / "c" / "samm.npz") as z:
        meta = json.loads(str(z["meta"]))
    assert meta[0]["apex"] == 1117 and meta[0]["apex_is_estimated"]
    assert main(args + ["--errata", "none"]) == 2
    errors, cap = err_lines(capsys)
    assert len(errors) == 1 and "apex 1143 outside onset..offset 1100..1134" in cap.err


# ------------------------------------------------------------------------------------------ Ctrl-C


@pytest.mark.slow
def test_ctrl_c_with_workers_stops_within_a_second(tmp_path):
    # enough samples that the queue cannot drain in the 0.2 s before the interrupt: with 6, a fast idle
    # Zen 4 (2026-12-04) had prepared all of them by then and the "queue dropped" check failed
    root = make_casme2_crops(tmp_path / "casme2", n=24, size=96)
    samples = samples_of(root)
    cfg = PrepConfig(size=14, face_size=96, flow="tvl1", regions="canonical")  # ~0.05-0.3 s per sample
    cache = tmp_path / "c"
    state = {}

    def interrupt():
        while not list(cache.rglob("*.npz")):
            time.sleep(0.02)
        time.sleep(0.2)
        state["t"] = time.monotonic()
        state["n"] = len(list(cache.rglob("*.npz")))
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    # SIGINT handled as a terminal's Ctrl-C is, also when the suite runs as a background job (`make test &`),
    # which the shell starts with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare(samples, cfg, cache, progress=False, workers=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    stopped = time.monotonic() - state["t"]
    print(f"stopped {stopped:.3f} s after SIGINT; {state['n']} entries at SIGINT")
    assert stopped < 1.0, f"prepare took {stopped:.2f} s to stop after Ctrl-C"
    time.sleep(0.5)  # nothing is still writing
    entries = list(cache.rglob("*.npz"))
    assert len(entries) <= state["n"] + 2 and len(entries) < len(samples)  # the queue was dropped
    assert not list(cache.rglob("*.tmp"))
    done = set()
    for p in entries:  # every entry is whole and its own
        with np.load(p) as z:
            assert str(z["key"]) == p.stem
            done.add(json.loads(str(z["meta"]))["uid"])
    resumed = prepare(samples, cfg, cache, progress=False)  # nothing lost: the rerun completes
    assert len(resumed) == len(samples)
    idx = [i for i, s in enumerate(samples) if s.uid in done]  # the entries written before Ctrl-C are right
    fresh = prepare([samples[i] for i in idx], cfg, tmp_path / "fresh", progress=False)
    np.testing.assert_array_equal(resumed.face[idx], fresh.face)


def test_show_sample_errors_are_one_line(root, tmp_path, capsys):
    cut_to_a_third(frame(root, 1, 2))
    argv = [
        "show-sample",
        "--dataset",
        "casme2",
        "--root",
        str(root),
        "--index",
        "0",
        "--out",
        str(tmp_path / "s.png"),
        "--flow",
        "dis",
        "--face-size",
        "56",
    ]
    assert main(argv) == 2
    errors, _ = err_lines(capsys)
    assert len(errors) == 1 and "reg_img2.jpg: truncated JPEG" in errors[0]

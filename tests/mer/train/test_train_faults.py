"""Fault injection in training, evaluation and prediction, on `mer synth --preset tiny` with
htnet_tiny, subject-grouped 2-fold, 3 epochs. Each fault must end in a one-line message naming the
problem, a known exit status, nothing lost (finished folds kept) and no wrong number: wherever the run
goes on, its predictions equal those of an undisturbed run to the last printed digit.

Rows: a run lock (second `mer train`, stale lock), `--on-error raise|warn` (a truncated frame, a missing
one), inputs changed between a kill and the rerun, damaged `last.pt` / `last.prev.pt`, damaged outputs of
a finished fold (missing, truncated, duplicated predictions, damaged result.json), an unwritable
--out/--cache, a full disk while a fold writes, `mer predict` with frames of two sizes / foreign weights /
a truncated checkpoint; and the rows handled before, end to end here: SIGKILL and SIGINT mid-fold, a
torchrun rank killed, damaged entries of the preprocessing cache.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from mer.cli import main
from mer.preprocess import PrepConfig, prepare
from mer.train import TrainConfig, run_training
from mer.train.data import load_samples
from mer.train.fingerprint import InputsChanged
from mer.train.lock import LOCK_NAME, RunLock, RunLocked
from mer.train.recovery import RecoveryWarning

EPOCHS, PROTOCOL, SIZE = 3, "kfold:2", 16
HERE = Path(__file__).parent


class Killed(RuntimeError):
    """Stands for the process being killed mid-fold."""


def kill_after(fold: int, epoch: int):
    def callback(task, state):
        if task.index == fold and state.epoch == epoch:
            raise Killed(f"fold {fold} killed after epoch {epoch}")

    return callback


def make(data, cache, out, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        protocol=PROTOCOL,
        model="htnet_tiny",
        epochs=EPOCHS,
        batch_size=8,
        lr=3e-3,
        prep=PrepConfig(flow="farneback", size=SIZE),
        out=str(out),
        cache_dir=str(cache),
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def train_args(data, cache, out, *extra, model="htnet_tiny") -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--protocol",
        PROTOCOL,
        "--model",
        model,
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--flow",
        "farneback",
        "--size",
        str(SIZE),
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def cli(args, capsys):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err


def error_line(err: str) -> str:
    """The one `... error: ...` line of a failed command (there must be exactly one)."""
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


def preds(run) -> str:
    return (Path(run) / "predictions.csv").read_text()


def fold_dirs(run) -> list[Path]:
    return [Path(run) / "folds" / f["dir"] for f in json.loads((Path(run) / "folds.json").read_text())]


def cut_to_a_third(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every run of this module on one torch thread, as the `mer` subprocesses (OMP_NUM_THREADS=1)."""


@pytest.fixture(scope="module")
def reference(synth_tiny, prep_cache, tmp_path_factory) -> Path:
    """An undisturbed run (its predictions are what every recovered run must reproduce)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference") / "run"
        run_training(make(synth_tiny, prep_cache, out))
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture
def data_copy(synth_tiny, tmp_path) -> Path:
    """A copy of the tiny synthetic data to damage (file dates kept: the preprocessing cache still hits)."""
    return Path(shutil.copytree(synth_tiny, tmp_path / "data"))


def apex_file(cfg: TrainConfig, index: int) -> tuple[str, Path]:
    s = load_samples(cfg)[index]
    return s.uid, Path(s.frame_path(s.apex))


# ----------------------------------------------------------------------------------------- the run lock


def test_a_second_train_into_the_same_out_is_refused(synth_tiny, prep_cache, tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out, command="mer train (the first one)"):
        rc, _, err = cli(train_args(synth_tiny, prep_cache, out), capsys)
        assert rc == 2
        line = error_line(err)
        assert f"in use by another `mer train` (pid {os.getpid()} on host {socket.gethostname()}, started 20" in line
        assert str(out / LOCK_NAME) in line and "choose another --out" in line
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the second run wrote nothing
        with pytest.raises(RunLocked):
            run_training(make(synth_tiny, prep_cache, out))
    assert list(out.iterdir()) == []  # released: the lock file is gone


def test_a_stale_lock_is_taken_over_with_a_notice(synth_tiny, prep_cache, tmp_path, capsys, reference):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (out / LOCK_NAME).write_text(
        json.dumps(
            {"pid": gone.pid, "host": socket.gethostname(), "started": time.time() - 3600, "command": "mer train"}
        )
    )
    rc, _, err = cli(train_args(synth_tiny, prep_cache, out), capsys)
    assert rc == 0, err
    notices = [ln for ln in err.splitlines() if ln.startswith("notice:")]
    assert len(notices) == 1 and f"took over the lock left by pid {gone.pid}" in notices[0]
    assert f"took over the lock left by pid {gone.pid}" in (out / "events.log").read_text()
    assert not (out / LOCK_NAME).exists() and preds(out) == preds(reference)


# ------------------------------------------------------------------------------------ --on-error


def test_on_error_raise_names_the_frame_and_warn_excludes_it(data_copy, prep_cache, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = make(data_copy, prep_cache, out)
    uid, apex = apex_file(cfg, 2)
    cut_to_a_third(apex)  # a partly written apex frame
    rc, _, err = cli(train_args(data_copy, prep_cache, out), capsys)
    assert rc == 2
    line = error_line(err)
    assert uid in line and f"{apex}: truncated JPEG" in line
    assert "--on-error warn" in line and "on_error=" not in line  # the flag the message names exists
    assert not (out / "folds").exists()

    s = load_samples(cfg)[5]  # a clip with a frame missing between onset and offset: a dataset problem
    middle = [f for f in s.frames if Path(f) not in (Path(s.frame_path(s.onset)), Path(s.frame_path(s.apex)))]
    Path(middle[0]).unlink()
    rc, _, err = cli(train_args(data_copy, prep_cache, out), capsys)
    assert rc == 2 and "missing on disk" in err and "--on-error warn" in err and "on_error=" not in err

    rc, _, err = cli(train_args(data_copy, prep_cache, out, "--on-error", "warn"), capsys)
    assert rc == 0, err
    excluded = json.loads((out / "excluded.json").read_text())
    assert len(excluded) == 2 and excluded[1]["uid"] == uid and "truncated JPEG" in excluded[1]["reason"]
    assert s.clip in excluded[0]["uid"] and "missing" in excluded[0]["reason"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 16 and len(m["excluded"]) == 2  # 18 - 2: counted, nothing silently dropped
    assert "2 sample(s) excluded" in (out / "summary.md").read_text()


def test_on_prep_error_still_parses():
    from mer.cli import build_parser
    from mer.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--on-prep-error", "warn"])
    assert config_from_args(args).on_prep_error == "warn"


# ------------------------------------------------------------------------- inputs changed on resume


def test_inputs_changed_between_a_kill_and_the_rerun(data_copy, prep_cache, tmp_path, capsys, reference):
    out = tmp_path / "run"
    cfg = make(data_copy, prep_cache, out)
    with pytest.raises(Killed):
        run_training(cfg, on_epoch_end=kill_after(1, 1))  # fold 0 finished, fold 1 has a checkpoint
    f0 = fold_dirs(out)[0] / "result.json"
    f0_mtime = f0.stat().st_mtime_ns
    uid_a, apex_a = apex_file(cfg, 0)
    uid_b, apex_b = apex_file(cfg, 7)
    st = apex_a.stat()
    os.utime(apex_a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: a new date, the same bytes
    original = apex_b.read_bytes()
    cv2.imwrite(str(apex_b), cv2.imread(str(apex_b))[:, ::-1])  # edited: mirrored
    rc, _, err = cli(train_args(data_copy, prep_cache, out), capsys)
    assert rc == 2
    line = error_line(err)
    assert "inputs changed since its folds were trained: 1 sample(s) changed" in line
    assert f"Changed: {uid_b}: its prepared input differs ({apex_b.relative_to(data_copy / 'samm')} size" in line
    assert uid_a not in line and "2 fold(s) were trained on the old inputs" in line and "--force" in line
    assert not (out / "metrics.json").exists() and f0.stat().st_mtime_ns == f0_mtime
    with pytest.raises(InputsChanged):
        run_training(cfg)

    apex_b.write_bytes(original)  # restored bytes, new date: the same inputs again -> the run resumes
    rc, _, err = cli(train_args(data_copy, prep_cache, out), capsys)
    assert rc == 0, err
    assert "notice:" in err and "give the same prepared inputs" in err
    assert f0.stat().st_mtime_ns == f0_mtime and preds(out) == preds(reference)

    cv2.imwrite(str(apex_b), cv2.imread(str(apex_b))[:, ::-1])
    assert cli(train_args(data_copy, prep_cache, out), capsys)[0] == 2
    rc, _, err = cli(train_args(data_copy, prep_cache, out, "--force"), capsys)  # start afresh
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 18 and m["folds_finished"] == 2
    rec = {r["uid"]: r for r in json.loads((out / "inputs.json").read_text())["samples"]}
    ref = {r["uid"]: r for r in json.loads((reference / "inputs.json").read_text())["samples"]}
    assert [u for u in rec if rec[u]["input"] != ref[u]["input"]] == [uid_b]


# --------------------------------------------------------------------------- damaged checkpoints


def test_damaged_last_pt_resumes_from_the_previous_checkpoint(synth_tiny, prep_cache, tmp_path, reference):
    out = tmp_path / "run"
    cfg = make(synth_tiny, prep_cache, out)
    with pytest.raises(Killed):
        run_training(cfg, on_epoch_end=kill_after(1, 2))
    f1 = fold_dirs(out)[1]
    assert (f1 / "last.pt").exists() and (f1 / "last.prev.pt").exists()
    cut_to_a_third(f1 / "last.pt")
    with pytest.warns(
        RecoveryWarning,
        match=r"last\.pt \(.*kept as last\.pt\.damaged\) does not load: the fold "
        r"resumes from the previous checkpoint last\.prev\.pt \(epoch 1\)",
    ):
        run_training(cfg)
    assert preds(out) == preds(reference)
    assert not (f1 / "last.pt").exists() and not (f1 / "last.prev.pt").exists() and (f1 / "last.pt.damaged").exists()
    assert "resumes from the previous checkpoint" in (out / "events.log").read_text()


def test_no_loadable_checkpoint_restarts_the_fold(synth_tiny, prep_cache, tmp_path, capsys, reference):
    out = tmp_path / "run"
    cfg = make(synth_tiny, prep_cache, out)
    with pytest.raises(Killed):
        run_training(cfg, on_epoch_end=kill_after(1, 2))
    f1 = fold_dirs(out)[1]
    cut_to_a_third(f1 / "last.pt")
    (f1 / "last.prev.pt").write_bytes(b"not a checkpoint")
    rc, _, err = cli(train_args(synth_tiny, prep_cache, out), capsys)
    assert rc == 0, err
    warns = [ln for ln in err.splitlines() if ln.startswith("warning: checkpoint")]
    assert len(warns) == 1 and str(f1 / "last.pt") in warns[0] and str(f1 / "last.prev.pt") in warns[0]
    assert "the fold restarts from scratch (epoch 0)" in warns[0]
    assert preds(out) == preds(reference)
    assert [h["epoch"] for h in json.loads((f1 / "history.json").read_text())] == [1, 2, 3]


# ---------------------------------------------------------------------- damaged finished-fold outputs


def _damage(fold: Path, how: str) -> str:
    p = fold / "predictions.csv"
    lines = p.read_text().splitlines(keepends=True)
    if how == "missing":
        p.unlink()
        return "predictions.csv is missing"
    if how == "truncated":
        p.write_text("".join(lines[:-1]) + lines[-1][:12])
        return "predictions.csv is truncated"
    if how == "duplicated":
        p.write_text("".join(lines + lines[-1:]))
        return "more than once"
    if how == "result":
        cut_to_a_third(fold / "result.json")
        return "result.json is damaged"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["missing", "truncated", "duplicated", "result"])
def test_damaged_fold_outputs(how, synth_tiny, prep_cache, tmp_path, capsys, reference):
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    f0 = fold_dirs(run)[0]
    what = _damage(f0, how)
    rc, _, err = cli(["evaluate", run, "--no-plots"], capsys)
    assert rc == 2
    line = error_line(err)
    assert f"fold {f0.name.split('-', 1)[1]}" in line or f0.name in line
    assert what in line and "Rerun `mer train` with the same options" in line
    if how == "truncated":
        rc, out, err = cli(["evaluate", run, "--no-plots", "--partial"], capsys)
        assert rc == 0 and "PARTIAL: 1 of 2 folds" in out and "warning:" in err
    ran = []
    with pytest.warns(RecoveryWarning, match=f"fold {f0.name} was finished but .*{what}.*training this fold again"):
        run_training(make(synth_tiny, prep_cache, run), on_fold_done=ran.append)
    assert [r["index"] for r in ran] == [0]  # only the damaged fold is trained again
    assert preds(run) == preds(reference)


# ----------------------------------------------------------------------------- unwritable folders


def test_unwritable_out_or_cache_is_one_line(synth_tiny, prep_cache, tmp_path, capsys, monkeypatch):
    import tempfile

    real = tempfile.mkstemp
    locked = tmp_path / "locked"
    locked.mkdir()

    def mkstemp(*a, dir=None, **k):  # noqa: A002 - tempfile's name
        if dir is not None and Path(dir).resolve() == locked.resolve():
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)  # (tests run as root: chmod would not stop us)
    rc, _, err = cli(train_args(synth_tiny, prep_cache, locked / "run"), capsys)
    assert rc == 2
    line = error_line(err)
    assert f"cannot create --out {locked / 'run'}: {locked} is not writable (Permission denied)" in line
    rc, _, err = cli(train_args(synth_tiny, locked, tmp_path / "run"), capsys)
    assert rc == 2 and f"cannot write to --cache {locked} (Permission denied)" in error_line(err)
    (tmp_path / "afile").write_text("x")
    rc, _, err = cli(train_args(synth_tiny, prep_cache, tmp_path / "afile"), capsys)
    assert rc == 2 and "--out" in error_line(err) and "is a file" in error_line(err)
    assert not (locked / "run").exists() and not (tmp_path / "run").exists()


def test_full_disk_while_a_fold_writes(synth_tiny, prep_cache, tmp_path, capsys, monkeypatch, reference):
    import mer.train.loop as loop

    out = tmp_path / "run"
    real = loop.atomic_write_json

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(loop, "atomic_write_json", full)
    rc, _, err = cli(train_args(synth_tiny, prep_cache, out), capsys)
    assert rc == 2
    line = error_line(err)
    assert "No space left on device" in line and "history.json" in line and "rerun the same command" in line
    monkeypatch.setattr(loop, "atomic_write_json", real)
    rc, _, err = cli(train_args(synth_tiny, prep_cache, out), capsys)
    assert rc == 0, err
    assert preds(out) == preds(reference)


# ----------------------------------------------------------------------------------- mer predict


def test_predict_faults_are_one_line(synth_tiny, reference, tmp_path, capsys):
    import torch

    model = fold_dirs(reference)[0] / "model.pt"
    clip = sorted((synth_tiny / "casme2").glob("CASME2_RAW_selected/sub01/*"))[0]
    frames = sorted(clip.glob("*.jpg"), key=lambda p: int("".join(c for c in p.stem if c.isdigit())))
    onset, apex = frames[0], frames[len(frames) // 2]
    big = tmp_path / "big.jpg"
    img = cv2.imread(str(apex))
    cv2.imwrite(str(big), cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2)))
    ck = torch.load(model, weights_only=True)
    foreign = dict(ck, state_dict={"backbone." + k: v for k, v in ck["state_dict"].items()})
    torch.save(foreign, tmp_path / "foreign.pt")
    reshaped = dict(
        ck,
        state_dict={k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if v.ndim else v for k, v in ck["state_dict"].items()},
    )
    torch.save(reshaped, tmp_path / "reshaped.pt")
    torch.save({k: v for k, v in ck.items() if k != "norm_std"}, tmp_path / "incomplete.pt")
    (tmp_path / "cut.pt").write_bytes(model.read_bytes()[:4000])
    (tmp_path / "cut.jpg").write_bytes(apex.read_bytes()[:2000])
    cases = [
        (model, big, f"the onset image {onset} is 320x280 pixels but the apex image {big} is 640x560"),
        (tmp_path / "foreign.pt", apex, "holds weights that do not fit its model 'htnet_tiny': 34 missing"),
        (tmp_path / "reshaped.pt", apex, "of another shape (e.g. patch_embed.proj.weight (17, 3, 2, 2) vs"),
        (tmp_path / "incomplete.pt", apex, "a `mer train` checkpoint without norm_std"),
        (tmp_path / "cut.pt", apex, "the file is damaged, truncated or not a torch checkpoint"),
        (model, tmp_path / "cut.jpg", "truncated JPEG"),
    ]
    for ckpt, second, expected in cases:
        rc, _, err = cli(["predict", "--checkpoint", ckpt, "--onset", onset, "--apex", second], capsys)
        assert rc == 2 and expected in error_line(err), (ckpt, err)
    rc, out, err = cli(["predict", "--checkpoint", model, "--onset", onset, "--apex", apex, "--json"], capsys)
    assert rc == 0 and json.loads(out)["models"] == 1


# --------------------------------------------------------------------- rows handled before, end to end


def test_damaged_cache_entries_do_not_change_the_result(synth_tiny, tmp_path, capsys, reference):
    # A fresh cache holding exactly this run's entries: the session-wide prep_cache also holds other tests'
    # entries, which this run never reads (damaging one of those proves nothing and fails the test).
    cache = tmp_path / "cache"
    cfg = make(synth_tiny, cache, tmp_path / "unused")
    prepare(load_samples(cfg), cfg.prep, cache_dir=cache, progress=False)
    entries = sorted(cache.glob("*/*.npz"))
    assert len(entries) >= 3
    cut_to_a_third(entries[0])  # a truncated entry
    shutil.copyfile(entries[1], entries[2])  # a valid entry copied over another key's file
    out = tmp_path / "run"
    rc, _, err = cli(train_args(synth_tiny, cache, out), capsys)
    assert rc == 0, err
    assert f"cache entry {entries[0]} is unreadable" in err
    assert f"cache entry {entries[2]} belongs to another key" in err
    assert preds(out) == preds(reference)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(**kw) -> dict:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **kw}


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["KILL", "INT"])
def test_killed_or_interrupted_mid_fold_resumes_exactly(sig, synth_tiny, prep_cache, tmp_path, reference):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "mer", *train_args(synth_tiny, prep_cache, out, model="fault_models:tiny")]
    cue = _env(MER_TEST_FAULT=f"{sig}:*:folds/001-*/last.pt", MER_TEST_FAULT_DIR=str(out))
    # the default SIGINT disposition in the child, also when the suite runs as a background job (`make test &`),
    # which the shell starts with SIGINT ignored (inherited, and Python then keeps ignoring it)
    p = subprocess.run(args, env=cue, capture_output=True, text=True, timeout=180, preexec_fn=_default_sigint)
    if sig == "KILL":
        assert p.returncode == -signal.SIGKILL and (out / LOCK_NAME).exists()  # left behind, unlocked
    else:
        assert p.returncode == 130 and p.stderr.strip().splitlines()[-1] == "interrupted", p.stderr[-2000:]
        assert not (out / LOCK_NAME).exists()
    f0, f1 = fold_dirs(out)
    assert (f0 / "result.json").exists() and (f1 / "last.pt").exists() and not (out / "metrics.json").exists()
    p = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert ("took over the lock left by pid" in p.stderr) == (sig == "KILL")
    assert preds(out) == preds(reference)  # fault_models:tiny is htnet_tiny: the same weights


@pytest.mark.slow
def test_torchrun_rank_killed_then_rerun(synth_tiny, prep_cache, tmp_path, reference):
    out = tmp_path / "dist"
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mer",
        *train_args(synth_tiny, prep_cache, out, model="fault_models:tiny"),
    ]
    cue = _env(MER_TEST_FAULT="KILL:1:folds/001-*/last.pt", MER_TEST_FAULT_DIR=str(out))
    p = subprocess.run(args, env=cue, capture_output=True, text=True, timeout=180)
    assert p.returncode != 0 and not (out / "metrics.json").exists()
    assert (fold_dirs(out)[1] / "last.pt").exists()
    p = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert preds(out) == preds(reference)
    assert json.loads((out / "metrics.json").read_text())["n"] == 18

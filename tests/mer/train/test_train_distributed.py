"""The torchrun path: 2 CPU processes (gloo) shard the folds and merge into one run directory, with the
same predictions as a single-process run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mer.train import run_training


@pytest.mark.slow
def test_torchrun_two_processes_merge_into_one_run(
    make_cfg, synth_tiny, prep_cache, tmp_path, subprocess_env, one_thread
):
    single = make_cfg(out=str(tmp_path / "single"))
    ref = run_training(single)  # also fills the preprocessing cache
    out = tmp_path / "dist"
    # --standalone: torchrun picks a free port itself (a port probed here could be taken before it binds)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mer",
        "train",
        "--data",
        str(synth_tiny),
        "--model",
        single.model,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        str(single.lr),
        "--flow",
        "farneback",
        "--size",
        str(single.prep.size),
        "--cache",
        str(prep_cache),
        "--out",
        str(out),
        "--no-progress",
    ]
    p = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    threads = set()
    ranks = set()
    for f in json.loads((out / "folds.json").read_text()):
        r = json.loads((out / "folds" / f["dir"] / "result.json").read_text())
        threads.add(r["threads"])
        ranks.add(f["index"] % 2)
    assert ranks == {0, 1} and threads == {1}
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 18 and m["folds_finished"] == 6
    assert m["scores"] == json.loads(json.dumps(ref["scores"]))
    assert (out / "predictions.csv").read_text() == (Path(single.out) / "predictions.csv").read_text()
    assert p.stdout.count("| composite (all) |") == 1  # rank 0 alone printed the merged table

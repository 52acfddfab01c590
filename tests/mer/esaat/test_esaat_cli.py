"""`mer prune` end to end: a tiny `mer train` run (synthetic 'tiny' preset, htnet_tiny, 2 epochs, LOSO over
6 subjects) -> ESAAT per fold -> files, pooled metrics, leakage checks, reloadable pruned models."""

import csv
import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mer.cli import main
    from mer.synth.config import SynthConfig
    from mer.synth.generate import generate

    tmp = tmp_path_factory.mktemp("esaat_cli")
    data, run = tmp / "synth", tmp / "run"
    generate(SynthConfig(preset="tiny", seed=0), data, progress=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(
            [
                "train",
                "--data",
                str(data),
                "--protocol",
                "loso",
                "--model",
                "htnet_tiny",
                "--model-arg",
                "block_repeats=2",
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
                "--no-progress",
            ]
        )
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return run


@pytest.mark.slow
def test_prune_end_to_end(tiny_run, tmp_path, capsys):
    from mer.cli import main
    from mer.esaat import load_pruned
    from mer.train import normalise, predict_proba

    out = tmp_path / "k1"
    args = [
        "prune",
        "--run",
        str(tiny_run),
        "--remove",
        "1",
        "--epochs",
        "2",
        "--fade-epochs",
        "1",
        "--calib",
        "8",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| before |" in text and "| after |" in text and "Kendall" in text
    for name in (
        "esaat.json",
        "metrics.json",
        "summary.md",
        "transfer_entropy.png",
        "predictions.csv",
        "esaat_config.json",
        "confusion.png",
    ):
        assert (out / name).is_file(), name
    s = json.loads((out / "esaat.json").read_text())
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 18 and m["folds"] == 6 and 0 <= m["scores"]["all"]["uf1"] <= 1
    assert s["after"]["uf1"] == m["scores"]["all"]["uf1"] and "uf1" in s["before"]
    assert len(s["per_fold"]) == 6
    assert all(len(f["removed"]) == 1 and len(f["layer_te"]) == 4 for f in s["per_fold"])
    assert s["after"]["flops"] < s["before"]["flops"]
    assert -1.0 <= s["ranking_agreement"]["spearman_mean"] <= 1.0
    # the latency the summary table reports is saved, with how it was measured
    assert s["latency"]["threads"] == 1 and s["latency"]["batch"] == 32 and s["latency"]["machine"]["cpu"]
    assert f"{s['after']['latency_ms_per_sample']:.3f}" in (out / "summary.md").read_text()
    folds = json.loads((tiny_run / "folds.json").read_text())
    with open(tiny_run / "samples.csv", newline="") as f:
        subj = {int(r["index"]): f"{r['dataset']}/{r['subject']}" for r in csv.DictReader(f)}
    # the held-out subject never informs the selection or fine-tuning
    for fold in folds:
        res = json.loads((out / "folds" / fold["dir"] / "result.json").read_text())
        held = set(fold["test_subjects"])
        for purpose in ("calibrate", "fit", "norm"):
            assert not {subj[i] for i in res["indices_used"][purpose]} & held, (fold["name"], purpose)
        assert sorted(res["indices_used"]["predict"]) == sorted(fold["test"])
    # a pruned fold model reloads and reproduces its predictions
    fold = folds[0]
    model = load_pruned(out / "folds" / fold["dir"] / "model.pt")
    assert len(model.attention_layers()) == 3
    ck = torch.load(out / "folds" / fold["dir"] / "model.pt", weights_only=True)
    from mer.train.config import TrainConfig
    from mer.train.data import load_inputs

    x = load_inputs(TrainConfig.from_dict(json.loads((tiny_run / "config.json").read_text())), progress=False).x
    prob = predict_proba(model, normalise(x[fold["test"]], np.asarray(ck["norm_mean"]), np.asarray(ck["norm_std"])))
    with open(out / "folds" / fold["dir"] / "predictions.csv", newline="") as f:
        saved = np.array(
            [[float(r[f"p_{c}"]) for c in ("negative", "positive", "surprise")] for r in csv.DictReader(f)]
        )
    np.testing.assert_allclose(prob, saved, atol=2e-6)
    # the same command again resumes (every fold is finished: nothing is redone); another setting into the
    # same folder is refused, naming what differs; bad options are clear errors
    stamps = {p: p.stat().st_mtime_ns for p in (out / "folds").rglob("*")}
    assert main(args) == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in (out / "folds").rglob("*")} == stamps
    assert json.loads((out / "esaat.json").read_text())["after"] == s["after"]
    assert main([*args[:4], "2", *args[5:]]) == 2
    err = capsys.readouterr().err
    assert "differs in: remove" in err and "--force" in err
    assert (
        main(
            [
                "prune",
                "--run",
                str(tiny_run),
                "--remove",
                "9",
                "--out",
                str(tmp_path / "k9"),
                "--no-progress",
                "--epochs",
                "0",
                "--fade-epochs",
                "0",
            ]
        )
        == 2
    )
    assert "0 <= k <= 4" in capsys.readouterr().err
    # a FLOP budget without fine-tuning: every fold's pruned model keeps at most 90% of the FLOPs
    assert (
        main(
            [
                "prune",
                "--run",
                str(tiny_run),
                "--flops-budget",
                "0.9",
                "--epochs",
                "0",
                "--fade-epochs",
                "0",
                "--calib",
                "8",
                "--out",
                str(tmp_path / "f90"),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    f90 = json.loads((tmp_path / "f90" / "esaat.json").read_text())
    assert all(f["after"]["flops"] <= 0.9 * f["before"]["flops"] for f in f90["per_fold"])
    assert all(f["removed"] for f in f90["per_fold"])
    assert main(["prune", "--run", str(tmp_path), "--remove", "1"]) == 2
    assert "not a `mer train` run" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_with_ddpm_finetuning_samples(tiny_run, tmp_path, capsys):
    """The paper's chain's last step: fine-tuning on each fold's real fit samples plus DDPM samples from a
    DDPM trained on those fit samples only; a second prune with the same settings reuses the cached DDPMs."""
    from mer.cli import main

    cache = tmp_path / "ddpm"
    base = ["prune", "--run", str(tiny_run), "--epochs", "1", "--fade-epochs", "0", "--calib", "8"]
    ddpm = ["--augment", "ddpm", "--augment-ratio", "1.0", "--ddpm-cache", str(cache), "--no-progress"]
    ddpm += ["--ddpm-arg", "train_steps=3", "--ddpm-arg", "sample_steps=2", "--ddpm-arg", "base_channels=4"]
    assert main([*base, "--remove", "1", "--out", str(tmp_path / "k1"), *ddpm]) == 0
    assert "DDPM samples per fold" in capsys.readouterr().out
    s = json.loads((tmp_path / "k1" / "esaat.json").read_text())
    assert s["augment"]["kind"] == "ddpm" and s["augment"]["n_generated_mean"] == s["augment"]["n_real_mean"]
    folds = json.loads((tiny_run / "folds.json").read_text())
    for fold in folds:
        res = json.loads((tmp_path / "k1" / "folds" / fold["dir"] / "result.json").read_text())
        assert res["n_generated"] == res["n_fit"] > 0
        assert not set(res["indices_used"]["fit"]) & set(fold["test"])
    cached = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file())
    assert {p.parts[0] for p in cached} == {f["dir"] for f in folds}  # one DDPM per fold
    stamps = {p: (cache / p).stat().st_mtime_ns for p in cached}
    assert main([*base, "--remove", "0", "--no-convert", "--out", str(tmp_path / "k0"), *ddpm]) == 0
    capsys.readouterr()
    assert {p: (cache / p).stat().st_mtime_ns for p in cached} == stamps  # reused, not retrained
    assert sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file()) == cached
    # DDPM options without the augmentation, and unknown DDPM keys, are clear errors
    assert main([*base, "--remove", "1", "--out", str(tmp_path / "x"), "--ddpm-arg", "train_steps=3"]) == 2
    assert "--augment ddpm" in capsys.readouterr().err
    bad = [*base, "--remove", "1", "--out", str(tmp_path / "y"), "--augment", "ddpm", "--ddpm-arg", "steps=3"]
    assert main(bad) == 2
    assert "DDPMConfig" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_workers_match_serial_resume_and_report_failed_folds(tiny_run, tmp_path, capsys, one_thread):
    """--workers 2 gives the serial predictions (each worker on one thread, as the serial run here); a run
    stopped part-way resumes with only the missing folds redone; a fold that fails is named, the others kept."""
    import shutil

    from mer.cli import main

    base = ["prune", "--run", str(tiny_run), "--remove", "1", "--epochs", "1", "--fade-epochs", "1"]
    base += ["--calib", "8", "--batch-size", "8", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "serial")]) == 0
    assert main([*base, "--out", str(tmp_path / "w2"), "--workers", "2"]) == 0
    capsys.readouterr()
    serial, w2 = tmp_path / "serial", tmp_path / "w2"
    assert (w2 / "predictions.csv").read_text() == (serial / "predictions.csv").read_text()
    assert (
        json.loads((w2 / "esaat.json").read_text())["per_fold"][0]["fold"]
        == json.loads((serial / "esaat.json").read_text())["per_fold"][0]["fold"]
    )  # fold order kept whatever order the workers finish in
    # stopped after some folds: drop two folds' completion records, rerun -> only those two are redone
    folds = json.loads((tiny_run / "folds.json").read_text())
    gone = [folds[1]["dir"], folds[4]["dir"]]
    for d in gone:
        (w2 / "folds" / d / "result.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (w2 / "folds").rglob("*") if p.is_file() and p.parent.name not in gone}
    assert main([*base, "--out", str(w2), "--workers", "2"]) == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert all((w2 / "folds" / d / "result.json").is_file() for d in gone)
    assert (w2 / "predictions.csv").read_text() == (serial / "predictions.csv").read_text()
    # a damaged fold model: that fold fails, is named, and the other folds are finished and kept
    run2 = tmp_path / "run2"
    shutil.copytree(tiny_run, run2)
    (run2 / "folds" / folds[2]["dir"] / "model.pt").write_bytes(b"not a checkpoint")
    args = ["prune", "--run", str(run2), *base[3:], "--out", str(tmp_path / "bad"), "--workers", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "1 fold(s) failed" in err and folds[2]["name"] in err and "rerun the same command" in err
    done = [f["dir"] for f in folds if (tmp_path / "bad" / "folds" / f["dir"] / "result.json").is_file()]
    assert done == [f["dir"] for f in folds if f["dir"] != folds[2]["dir"]]
    assert main(["prune", "--run", str(run2), "--remove", "1", "--workers", "0", "--out", str(tmp_path / "z")]) == 2
    assert "workers must be at least 1" in capsys.readouterr().err

"""scripts/ablation.py on finished run directories (no training): which scores go into which column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ablation(load_script):
    return load_script("ablation")


def scores(uf1: float) -> dict:
    per = {d: {"uf1": uf1 + i / 100, "uar": uf1, "n": 10} for i, d in enumerate(("casme2", "samm", "smic"))}
    return {"all": {"uf1": uf1, "uar": uf1 - 0.01, "n": 30}, **per}


def fake_run(out: Path, release: Path, seed: int, honest: float, oracle: float, **config) -> None:
    out.mkdir(parents=True)
    cfg = {
        "data": f"htnet-release:{release}",
        "protocol": "loso",
        "epochs": 35,
        "seed": seed,
        "model": "htnet_small_lape",
        "augment": "none",
        "input": "face",
        "selection": "oracle-release",
        "lr": 3e-4,
        **config,
    }
    (out / "config.json").write_text(json.dumps(cfg))
    m = {
        "oracle": True,
        "selection": "oracle",
        "folds": 68,
        "folds_finished": 68,
        "scores": scores(oracle),
        "last_epoch": {"selection": "fixed budget", "scores": scores(honest)},
        "timing": {"fold_seconds_mean": 20.0, "fold_cpu_seconds_mean": 40.0 + seed},
    }
    (out / "metrics.json").write_text(json.dumps(m))


def test_honest_columns_are_the_last_epoch_and_oracle_ones_the_test_selection(ablation, tmp_path, monkeypatch):
    release = tmp_path / "release"
    release.mkdir()
    for seed, (h, o) in enumerate([(0.60, 0.80), (0.64, 0.84)]):
        fake_run(tmp_path / "out" / f"lape-s{seed}", release, seed, h, o)
    # the runs were written with an absolute path; the table is asked for with a relative one
    monkeypatch.chdir(tmp_path)
    ablation.main(
        [
            "--data",
            "htnet-release:release",
            "--out",
            str(tmp_path / "out"),
            "--configs",
            "lape",
            "--seeds",
            "0,1",
            "--protocol",
            "loso",
            "--epochs",
            "35",
            "--lr",
            "3e-4",
            "--input",
            "face",
            "--selection",
            "oracle-release",
        ]
    )
    table = (tmp_path / "out" / "ablation.md").read_text()
    row = next(ln for ln in table.splitlines() if ln.startswith("| lape |")).split(" | ")
    assert row[2:4] == ["0.620 ± 0.028", "0.610 ± 0.028"]  # honest UF1 / UAR: mean ± sample std
    assert row[4:7] == ["0.620 ± 0.028", "0.630 ± 0.028", "0.640 ± 0.028"]  # CASME II, SAMM, SMIC-HS UF1
    assert row[7:9] == ["0.820 ± 0.028", "0.810 ± 0.028"]  # oracle
    assert row[-2:] == ["40", "0,1 |"]  # mean CPU s per fold over the seeds, the seeds
    assert "NOT a valid estimate" in table
    rows = json.loads((tmp_path / "out" / "ablation.json").read_text())["rows"]
    assert [r["uf1"] for r in rows] == [0.60, 0.64] and [r["oracle"]["uf1"] for r in rows] == [0.80, 0.84]


def test_a_reused_run_with_other_settings_is_refused(ablation, tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    fake_run(tmp_path / "out" / "lape-s0", release, 0, 0.6, 0.8, lr=1e-3)
    with pytest.raises(SystemExit, match=r"other settings \(lr: 0.001, asked 0.0003\)"):
        ablation.main(
            [
                "--data",
                f"htnet-release:{release}",
                "--out",
                str(tmp_path / "out"),
                "--configs",
                "lape",
                "--seeds",
                "0",
                "--protocol",
                "loso",
                "--epochs",
                "35",
                "--lr",
                "3e-4",
                "--input",
                "face",
                "--selection",
                "oracle-release",
            ]
        )


def test_only_finished_tabulates_what_is_there_and_trains_nothing(ablation, tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    fake_run(tmp_path / "out" / "lape-s2", release, 2, 0.6, 0.8)
    args = [
        "--data",
        f"htnet-release:{release}",
        "--out",
        str(tmp_path / "out"),
        "--configs",
        "htnet,lape",
        "--seeds",
        "0,1,2",
        "--protocol",
        "loso",
        "--epochs",
        "35",
        "--lr",
        "3e-4",
        "--input",
        "face",
        "--selection",
        "oracle-release",
        "--only-finished",
    ]
    ablation.main(args)
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "| lape |" in table and "| htnet |" not in table
    assert not (tmp_path / "out" / "htnet-s0").exists()
    (tmp_path / "out" / "lape-s2" / "metrics.json").unlink()
    with pytest.raises(SystemExit, match="no finished run"):
        ablation.main(args)

"""scripts/esaat_table.py on fake `mer train` / `mer prune` folders: which numbers land in which column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def table(load_script):
    return load_script("esaat_table")


def scores(uf1: float) -> dict:
    return {
        "all": {"uf1": uf1, "uar": uf1 - 0.01},
        **{d: {"uf1": uf1 + i / 100, "uar": uf1} for i, d in enumerate(("casme2", "samm", "smic"))},
    }


def folds(d: Path, cpu: list[float]) -> None:
    for i, c in enumerate(cpu):
        (d / "folds" / f"f{i}").mkdir(parents=True)
        (d / "folds" / f"f{i}" / "result.json").write_text(json.dumps({"cpu_seconds": c}))


def prune_dir(
    d: Path, uf1: float, removed: list[list[str]], *, remove: int = 2, params: float = 130000, base: Path | None = None
) -> Path:
    """A fake `mer prune` output folder (of the `mer train` run ``base``): one fold per entry of ``removed``."""
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"oracle": False, "scores": scores(uf1)}))
    (d / "esaat.json").write_text(
        json.dumps(
            {
                "run": None if base is None else str(base),
                "config": {"criterion": "signed", "remove": remove},
                "before": {"params": 150000, "flops": 30.3e6},
                "after": {"params": params, "flops": 22.1e6},
                "per_fold": [{"fold": f"f{i}", "removed": r} for i, r in enumerate(removed)],
                "augment": {"kind": "ddpm", "ratio": "balance", "n_real_mean": 430.0, "n_generated_mean": 311.6},
            }
        )
    )
    folds(d, [10.0 + 4 * i for i in range(len(removed))])
    return d


A, B, C = "levels.0.blocks.0.attn", "levels.1.blocks.1.attn", "levels.0.blocks.1.attn"


def test_rows_columns_and_errors(table, tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    (base / "metrics.json").write_text(
        json.dumps({"oracle": True, "scores": scores(0.9), "last_epoch": {"scores": scores(0.6)}})
    )
    folds(base, [40.0, 42.0])
    prune = prune_dir(tmp_path / "k2", 0.7, [[A, B], [B, A], [A, B], [A, C]], base=base)
    out = tmp_path / "table"
    assert table.main(["--out", str(out), "--base", f"base=run={base}", "--row", f"ESAAT k=2={prune}"]) == 0
    md = (out / "esaat_table.md").read_text().splitlines()
    # the base row: the honest (last-epoch) scores of an oracle run, the model's cost before pruning
    assert md[2] == (
        "| base=run | 0.600 | 0.590 | 0.600 / 0.610 / 0.620 | 150,000 | 30.3 | - | - | 41 (training) | 1 | - |"
    )
    # the modal removed set ignores the order within a fold's set: 3 of the 4 folds removed {A, B};
    # the paired difference: 0.700 - the base run's honest 0.600
    assert md[3] == (
        "| ESAAT k=2 | 0.700 | 0.690 | 0.700 / 0.710 / 0.720 | 130,000 | 22.1 | L0b0, L1b1 (0.75) | 312 | 16 | 1 "
        "| +0.100 |"
    )
    rows = json.loads((out / "esaat_table.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["base=run", "ESAAT k=2"] and rows[1]["remove"] == 2
    capsys.readouterr()
    assert table.main(["--out", str(out), "--row", f"x={tmp_path}"]) == 2
    assert "finished `mer prune` output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        table.main(["--out", str(out), "--row", "no-separator"])


def base_dir(d: Path, uf1: float) -> Path:
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"oracle": False, "scores": scores(uf1)}))
    return d


def test_several_seeds_make_one_row_with_mean_and_std(table, tmp_path, capsys):
    b0, b1 = base_dir(tmp_path / "b0", 0.60), base_dir(tmp_path / "b1", 0.65)
    s0 = prune_dir(tmp_path / "s0", 0.70, [[A, B], [A, B]], params=130000, base=b0)
    s1 = prune_dir(tmp_path / "s1", 0.60, [[A, C], [A, B]], params=140000, base=b1)
    out = tmp_path / "table"
    # the base runs in the other order than the prunes: pairs are found by the run each prune names
    assert table.main(["--out", str(out), "--base", f"b={b1},{b0}", "--row", f"k=2={s0},{s1}"]) == 0
    md = (out / "esaat_table.md").read_text().splitlines()
    # mean ± sample std of 0.70 and 0.60; per-dataset means; params averaged; {A, B} in 3 of 4 folds;
    # paired differences +0.10 and -0.05: mean +0.025, sample std 0.106
    assert md[3] == (
        "| k=2 | 0.650 ± 0.071 | 0.640 ± 0.071 | 0.650 / 0.660 / 0.670 | 135,000 | 22.1 | L0b0, L1b1 (0.75) "
        "| 312 | 12 | 2 | +0.025 ± 0.106 |"
    )
    row = json.loads((out / "esaat_table.json").read_text())["rows"][1]
    assert row["n_runs"] == 2 and [r["scores"]["all"]["uf1"] for r in row["per_run"]] == [0.70, 0.60]
    # without the base runs there is nothing to pair with
    assert table.main(["--out", str(out), "--row", f"k=2={s0},{s1}"]) == 0
    assert (out / "esaat_table.md").read_text().splitlines()[2].endswith("| 2 | - |")
    # one row is one configuration: runs with a different number of removed layers are refused
    k1 = prune_dir(tmp_path / "k1", 0.6, [[A]], remove=1)
    capsys.readouterr()
    assert table.main(["--out", str(out), "--row", f"mixed={s0},{k1}"]) == 2
    assert "differ in criterion" in capsys.readouterr().err

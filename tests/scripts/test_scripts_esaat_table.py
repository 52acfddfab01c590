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


def test_rows_columns_and_errors(table, tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    (base / "metrics.json").write_text(
        json.dumps({"oracle": True, "scores": scores(0.9), "last_epoch": {"scores": scores(0.6)}})
    )
    folds(base, [40.0, 42.0])
    prune = tmp_path / "k2"
    prune.mkdir()
    (prune / "metrics.json").write_text(json.dumps({"oracle": False, "scores": scores(0.7)}))
    (prune / "esaat.json").write_text(
        json.dumps(
            {
                "config": {"criterion": "signed", "remove": 2},
                "before": {"params": 150000, "flops": 30.3e6},
                "after": {"params": 130000, "flops": 22.1e6},
                "selection_agreement": {
                    "modal_set": ["levels.0.blocks.0.attn", "levels.1.blocks.1.attn"],
                    "modal_share": 0.75,
                },
                "augment": {"kind": "ddpm", "ratio": "balance", "n_real_mean": 430.0, "n_generated_mean": 311.6},
            }
        )
    )
    folds(prune, [10.0, 14.0])
    out = tmp_path / "table"
    assert table.main(["--out", str(out), "--base", f"base=run={base}", "--row", f"ESAAT k=2={prune}"]) == 0
    md = (out / "esaat_table.md").read_text().splitlines()
    # the base row: the honest (last-epoch) scores of an oracle run, the model's cost before pruning
    assert md[2] == "| base=run | 0.600 | 0.590 | 0.600 / 0.610 / 0.620 | 150,000 | 30.3 | - | - | 41 (training) |"
    assert (
        md[3] == "| ESAAT k=2 | 0.700 | 0.690 | 0.700 / 0.710 / 0.720 | 130,000 | 22.1 | L0b0, L1b1 (0.75) | 312 | 12 |"
    )
    rows = json.loads((out / "esaat_table.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["base=run", "ESAAT k=2"] and rows[1]["remove"] == 2
    capsys.readouterr()
    assert table.main(["--out", str(out), "--row", f"x={tmp_path}"]) == 2
    assert "finished `mer prune` output" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        table.main(["--out", str(out), "--row", "no-separator"])

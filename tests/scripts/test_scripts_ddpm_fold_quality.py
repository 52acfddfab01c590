"""scripts/ddpm_fold_quality.py: the summary over folds (the per-fold part is mer.augment.quality_report)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("ddpm_fold_quality", ROOT / "scripts" / "ddpm_fold_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rec(i: int) -> dict:
    return {
        "fold": f"f{i}",
        "n_train": 400 + i,
        "n_generated": 300 - i,
        "median_ratio_gen_over_real": 1.0 + i / 10,
        "near_copy_fraction": 0.0,
        "class_mean_abs_diff": {0: None, 1: [1.0 * i, 0.5, 0.1]},
        "class_std_ratio": {0: None, 1: [1.0 + i, 0.8, 0.9]},
    }


def test_summary_over_folds():
    s = load().summarise([rec(0), rec(1), rec(2)])
    assert s["folds"] == 3 and s["n_train"] == {"median": 401.0, "min": 400.0, "max": 402.0}
    assert s["median_ratio_gen_over_real"]["median"] == 1.1
    # a class with no generated samples (None) is left out, not counted as zero
    assert list(s["generated_classes"]) == [1]
    assert s["generated_classes"][1]["mean_abs_diff_median_per_channel"] == [1.0, 0.5, 0.1]
    assert s["generated_classes"][1]["std_ratio_median_per_channel"] == [2.0, 0.8, 0.9]


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert load().main(["--run", str(tmp_path), "--out", str(tmp_path / "q"), "--no-progress"]) == 2
    assert "ddpm_fold_quality: error" in capsys.readouterr().err

"""scripts/ddpm_fold_quality.py: the summary over folds (the per-fold part is mer.augment.quality_report)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def quality(load_script):
    return load_script("ddpm_fold_quality")


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


def test_summary_over_folds(quality):
    s = quality.summarise([rec(0), rec(1), rec(2)])
    assert s["folds"] == 3 and s["n_train"] == {"median": 401.0, "min": 400.0, "max": 402.0}
    assert s["median_ratio_gen_over_real"]["median"] == 1.1
    # a class with no generated samples (None) is left out, not counted as zero
    assert list(s["generated_classes"]) == [1]
    assert s["generated_classes"][1]["mean_abs_diff_median_per_channel"] == [1.0, 0.5, 0.1]
    assert s["generated_classes"][1]["std_ratio_median_per_channel"] == [2.0, 0.8, 0.9]


def test_missing_run_is_a_clear_error(quality, tmp_path, capsys):
    assert quality.main(["--run", str(tmp_path), "--out", str(tmp_path / "q"), "--no-progress"]) == 2
    assert "ddpm_fold_quality: error" in capsys.readouterr().err

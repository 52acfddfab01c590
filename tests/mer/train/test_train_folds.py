"""--folds: a run trained a slice at a time (a GPU lease ends before all folds are done) equals the run
trained in one go; each slice's report scores the finished folds and names them."""

from __future__ import annotations

import json

import pytest

from mer.train import run_training
from mer.train.config import FoldListError, parse_fold_list


def test_parse_fold_list():
    assert parse_fold_list("0-2,5, 4") == [0, 1, 2, 4, 5]
    assert parse_fold_list("3") == [3]
    for bad in ("a", "3-1", "-1", "1,,2"):
        with pytest.raises(ValueError, match="folds"):
            parse_fold_list(bad)


def _preds(run):
    return (run / "predictions.csv").read_text()


@pytest.mark.slow
def test_slices_add_up_to_the_whole_run(make_cfg, tmp_path, one_thread):
    kw = dict(protocol="kfold:3", epochs=2)
    whole = run_training(make_cfg(out=str(tmp_path / "whole"), **kw))
    sliced = tmp_path / "sliced"
    first = run_training(make_cfg(out=str(sliced), folds="1", **kw))
    assert first["folds_finished"] == 1 and first["folds_scored"] == [
        json.loads((sliced / "folds.json").read_text())[1]["name"]
    ]
    assert "PARTIAL: 1 of 3 folds" in (sliced / "summary.md").read_text()
    done = run_training(make_cfg(out=str(sliced), folds="0-2", **kw))  # fold 1 kept, 0 and 2 trained
    assert done["folds_finished"] == 3 and done["scores"] == whole["scores"]
    assert _preds(sliced) == _preds(tmp_path / "whole")
    with pytest.raises(FoldListError, match="3 folds, indices 0 to 2"):
        run_training(make_cfg(out=str(sliced), folds="2-3", **kw))
    fresh = tmp_path / "fresh"  # refused before the run's inputs, samples and folds are recorded
    with pytest.raises(FoldListError, match="3 folds, indices 0 to 2"):
        run_training(make_cfg(out=str(fresh), folds="3", **kw))
    assert not any((fresh / n).exists() for n in ("inputs.json", "samples.csv", "folds.json"))


@pytest.mark.slow
def test_parts_in_separate_folders_pool_to_the_whole_run(make_cfg, tmp_path, one_thread, capsys, load_script):
    """scripts/pool_partial_runs.py: the parts' metrics.json add up to the whole run's scores."""
    script = load_script("pool_partial_runs")

    kw = dict(protocol="kfold:3", epochs=2)
    whole = run_training(make_cfg(out=str(tmp_path / "whole"), **kw))
    run_training(make_cfg(out=str(tmp_path / "a"), folds="0,2", **kw))
    run_training(make_cfg(out=str(tmp_path / "b"), folds="1", **kw))
    out = tmp_path / "pooled.json"
    capsys.readouterr()  # the runs' own tables
    assert script.main([str(tmp_path / "a"), str(tmp_path / "b" / "metrics.json"), "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())
    assert pooled["folds_finished"] == 3 and "PARTIAL" not in capsys.readouterr().out
    for name, s in whole["scores"].items():
        assert pooled["scores"][name]["confusion"] == s["confusion"]
        assert pooled["scores"][name]["uf1"] == pytest.approx(s["uf1"], abs=1e-12)
        assert pooled["scores"][name]["uar"] == pytest.approx(s["uar"], abs=1e-12)
    # the same fold twice, or another experiment: refused with the reason
    assert script.main([str(tmp_path / "a"), str(tmp_path / "a")]) == 2
    assert "would count twice" in capsys.readouterr().err
    run_training(make_cfg(out=str(tmp_path / "c"), folds="1", seed=1, **kw))
    assert script.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    assert "differs in seed" in capsys.readouterr().err


@pytest.mark.slow
def test_other_predictions_are_scored_on_the_pooled_clips_only(make_cfg, tmp_path, one_thread, capsys, load_script):
    """--same-clips: a whole LOSO run's predictions, restricted to a part's folds, score what the part
    trained alone scores (the part's predictions equal the whole run's on its folds): from its
    predictions.csv, and from its run folder with the last epoch's predictions as a second line."""
    script = load_script("pool_partial_runs")

    kw = dict(selection="oracle-release")
    run_training(make_cfg(out=str(tmp_path / "whole"), **kw))
    part = run_training(make_cfg(out=str(tmp_path / "a"), folds="0,2", **kw))
    out = tmp_path / "pooled.json"
    whole = tmp_path / "whole"
    assert (
        script.main(
            [str(tmp_path / "a"), "--same-clips", str(whole / "predictions.csv"), str(whole), "--out", str(out)]
        )
        == 0
    )
    csv_entry, selected, last = json.loads(out.read_text())["same_clips"]
    assert (selected["group"], last["group"]) == ("selection=run's selection", "selection=last epoch")
    assert csv_entry["n"] == part["n"] < json.loads((whole / "metrics.json").read_text())["n"]
    expected = (part["scores"], part["scores"], part["last_epoch"]["scores"])
    for entry, scores in zip((csv_entry, selected, last), expected, strict=True):
        assert entry["n"] == part["n"]
        assert entry["uf1"] == pytest.approx(scores["all"]["uf1"], abs=1e-12)
        assert entry["uar"] == pytest.approx(scores["all"]["uar"], abs=1e-12)
    assert "Other predictions on the same clips" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert script.main([str(tmp_path / "a"), "--same-clips", str(bad)]) == 2
    assert "not a predictions.csv" in capsys.readouterr().err

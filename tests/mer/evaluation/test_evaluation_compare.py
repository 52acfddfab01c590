"""mer.evaluation.compare: the paired subject bootstrap of pooled UF1/UAR, its pairing checks, and the run
folders and CSVs it reads; `mer compare` on the command line."""

import csv
import json

import numpy as np
import pytest

from mer.evaluation.compare import (
    Predictions,
    compare,
    format_comparison,
    join_parts,
    load_predictions,
    scores_from_confusions,
)
from mer.metrics import uf1_uar, uf1_uar_from_confusion

DBS = {"casme2": 6, "samm": 5, "smic": 4}  # subjects per database


def _truth(seed=0, clips=5):
    rng = np.random.default_rng(seed)
    rows = [(d, f"s{i}") for d, n in DBS.items() for i in range(n) for _ in range(clips)]
    labels = rng.integers(0, 3, len(rows))
    return rows, labels


def _preds(name, rows, labels, pred):
    return Predictions(
        name=name,
        selection="test",
        dataset=np.array([d for d, _ in rows]),
        subject=np.array([f"{d}/{s}" for d, s in rows]),
        label=np.asarray(labels),
        pred=np.asarray(pred),
    )


def _noisy(labels, p_right, seed):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(len(labels)) < p_right, labels, rng.integers(0, 3, len(labels)))


def test_vectorised_scores_equal_the_metric_module():
    rng = np.random.default_rng(0)
    cms = rng.integers(0, 6, (50, 3, 3))
    cms[::7, 1] = 0  # a class absent from the truth
    cms[::5, :, 2] = 0  # a class never predicted
    uf1, uar = scores_from_confusions(cms)
    for c, f, r in zip(cms, uf1, uar, strict=True):
        assert (f, r) == pytest.approx(uf1_uar_from_confusion(c), abs=1e-12)


def test_a_clearly_better_model_is_separated_and_equal_models_are_not():
    rows, y = _truth()
    good = [_preds(f"good{s}", rows, y, _noisy(y, 0.9, s)) for s in range(3)]
    poor = [_preds("poor", rows, y, _noisy(y, 0.2, 9))]
    res = compare(good, poor, n_boot=500, seed=1)
    u = res["sets"]["all"]["uf1"]
    # observed: each side's pooled score, a side of several runs their mean
    assert u["a"] == pytest.approx(np.mean([uf1_uar(y, g.pred)[0] for g in good]))
    assert u["b"] == pytest.approx(uf1_uar(y, poor[0].pred)[0])
    assert u["ci95"][0] > 0 and u["p_a_not_better"] == 0.0
    assert set(res["sets"]) == {"all", *DBS} and res["sets"]["samm"]["subjects"] == 5
    assert "A is ahead of B" in format_comparison(res)
    same = compare(good[:1], good[:1], n_boot=200)
    s = same["sets"]["all"]["uf1"]
    assert s["diff"] == 0 and s["ci95"] == [0.0, 0.0] and s["p_a_not_better"] == 1.0
    assert "do not separate" in format_comparison(same)
    # reproducible draws; another seed moves the interval a little
    assert compare(good, poor, n_boot=500, seed=1)["sets"] == res["sets"]
    assert compare(good, poor, n_boot=500, seed=2)["sets"]["all"]["uf1"]["ci95"] != u["ci95"]


def test_seeds_are_resampled_with_the_subjects_or_paired_or_held_fixed():
    """B: three seeds of very different quality; A: each of B's seeds with a few more clips right. Held
    fixed, the seeds' spread is outside the interval; resampled, it widens it; paired (A's seed i made from
    B's seed i), the consistent gain stands out again."""
    rows, y = _truth(clips=8)
    rng = np.random.default_rng(7)
    base = [_noisy(y, p, 10 + i) for i, p in enumerate((0.35, 0.6, 0.85))]
    better = []
    for pr in base:
        fix = (pr != y) & (rng.random(len(y)) < 0.25)  # a quarter of each seed's errors corrected
        better.append(np.where(fix, y, pr))
    a = [_preds(f"a{i}", rows, y, p) for i, p in enumerate(better)]
    b = [_preds(f"b{i}", rows, y, p) for i, p in enumerate(base)]
    width = {}
    for mode in ("fixed", "resample", "paired"):
        res = compare(a, b, n_boot=1000, seed=3, runs=mode)
        lo, hi = res["sets"]["all"]["uf1"]["ci95"]
        width[mode] = hi - lo
        assert res["runs"] == mode and f"{res['sets']['all']['uf1']['diff']:.4f}" in format_comparison(res)
        if mode != "resample":
            assert lo > 0, mode  # a gain in every seed
    assert width["resample"] > 2 * width["paired"] and width["resample"] > 2 * width["fixed"]
    # the same draws of subjects in every mode: fixed is the bootstrap of the runs given, drawn as before
    u = compare(a, b, n_boot=1000, seed=3, runs="fixed")["sets"]["all"]["uf1"]
    assert u["diff"] == pytest.approx(np.mean(u["a_runs"]) - np.mean(u["b_runs"]))
    single = compare(a[:1], b, n_boot=200)
    assert any("side A is one run: the interval holds no seed-to-seed variation" in n for n in single["notes"])
    with pytest.raises(ValueError, match="A has 1 runs and B 3"):
        compare(a[:1], b, n_boot=200, runs="paired")
    with pytest.raises(ValueError, match="runs='both'"):
        compare(a, b, n_boot=200, runs="both")
    # where the runs name their seeds, paired refuses a different order on the two sides
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        ra.seed, rb.seed = i, i
    assert compare(a, b, n_boot=200, runs="paired")["a"][2]["seed"] == 2
    with pytest.raises(ValueError, match=r"seeds differ: A \[0, 1, 2\], B \[2, 1, 0\]"):
        compare(a, b[::-1], n_boot=200, runs="paired")


def test_runs_must_hold_the_same_subjects_and_samples():
    rows, y = _truth()
    a = _preds("a", rows, y, y)
    with pytest.raises(ValueError, match="hold different subjects"):
        compare([a], [_preds("b", rows[5:], y[5:], y[5:])], n_boot=100)
    flipped = y.copy()
    flipped[0] = (flipped[0] + 1) % 3
    with pytest.raises(ValueError, match="subject casme2/s0: b has label counts"):
        compare([a], [_preds("b", rows, flipped, y)], n_boot=100)
    with pytest.raises(ValueError, match="at least 100 draws"):
        compare([a], [a], n_boot=10)


def test_a_run_in_parts_joins_and_a_partial_run_compares_on_common_subjects():
    rows, y = _truth()
    pred = _noisy(y, 0.7, 4)
    whole = _preds("whole", rows, y, pred)
    cut = 30  # casme2's first 6 subjects x 5 clips: the parts split between subjects
    first, second = _preds("p1", rows[:cut], y[:cut], pred[:cut]), _preds("p2", rows[cut:], y[cut:], pred[cut:])
    joined = join_parts([first, second])
    floor = [_preds("floor", rows, y, _noisy(y, 0.5, 5))]
    assert (
        joined.name == "p1+p2"
        and compare([joined], floor, n_boot=200)["sets"] == compare([whole], floor, n_boot=200)["sets"]
    )
    with pytest.raises(ValueError, match="p2 and p1 both hold subject casme2/s5"):
        join_parts([first, _preds("p2", rows[25:], y[25:], pred[25:])])
    # a partial run against a complete one: refused, unless scored on the subjects both hold
    with pytest.raises(ValueError, match="hold different subjects"):
        compare([second], floor, n_boot=200)
    res = compare([second], floor, n_boot=200, common=True)
    assert res["subjects"] == len(set(second.subject)) == 9 and res["samples"] == len(rows) - cut
    assert set(res["sets"]) == {"all", "samm", "smic"}
    assert any("floor: scored on the 9 subjects every run holds (45 of its 75 samples" in n for n in res["notes"])
    keep = slice(cut, None)
    alone = compare([second], [_preds("floor", rows[keep], y[keep], floor[0].pred[keep])], n_boot=200)
    assert res["sets"] == alone["sets"]  # the same as cutting the floor by hand
    with pytest.raises(ValueError, match="no subject in common"):
        compare([first], [second], n_boot=200, common=True)


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _fake_run(root, rows, y, selected, last=None, oracle=True, folds_finished=None):
    """A `mer train` run folder as load_predictions reads it: metrics.json, predictions.csv and per fold
    result.json (+ predictions_last_epoch.csv when ``last`` is given)."""
    head = ["index", "dataset", "subject", "clip", "label", "pred", "p_negative", "p_positive", "p_surprise"]
    line = lambda i, p: [i, rows[i][0], rows[i][1], f"c{i}", int(y[i]), int(p[i]), 0.3, 0.3, 0.4]  # noqa: E731
    _write_csv(root / "predictions.csv", head, [line(i, selected) for i in range(len(rows))])
    subjects = sorted({r for r in rows})
    for d, s in subjects:
        fold = root / "folds" / f"{d}-{s}"
        fold.mkdir(parents=True)
        (fold / "result.json").write_text("{}")
        if last is not None:
            idx = [i for i, r in enumerate(rows) if r == (d, s)]
            _write_csv(fold / "predictions_last_epoch.csv", head, [line(i, last) for i in idx])
    n = len(subjects)
    metrics = {
        "selection": "oracle (test-fold selection, not a valid estimate)" if oracle else "fixed budget (2 epochs)",
        "oracle": oracle,
        "valid_estimate": not oracle,
        "folds": n,
        "folds_finished": n if folds_finished is None else folds_finished,
        "last_epoch": {"selection": "fixed budget (2 epochs, last epoch)"},
        "seed": 4,
    }
    (root / "metrics.json").write_text(json.dumps(metrics))


def test_an_oracle_run_is_compared_at_its_last_epoch_unless_asked(tmp_path):
    rows, y = _truth()
    sel, last = y, _noisy(y, 0.5, 3)
    _fake_run(tmp_path / "run", rows, y, sel, last, folds_finished=14)
    honest = load_predictions(tmp_path / "run")
    assert np.array_equal(np.sort(honest.pred), np.sort(last)) and honest.selection.endswith("last epoch)")
    assert honest.seed == 4  # from metrics.json
    assert any("last epoch" in n for n in honest.notes) and any("PARTIAL, 14 of 15" in n for n in honest.notes)
    picked = load_predictions(tmp_path / "run", which="selected")
    assert np.array_equal(picked.pred, sel) and picked.selection.startswith("oracle")
    _fake_run(tmp_path / "nolast", rows, y, sel, last=None)
    with pytest.raises(ValueError, match="did not save their last-epoch predictions.*--which selected"):
        load_predictions(tmp_path / "nolast")
    _fake_run(tmp_path / "fixed", rows, y, sel, last=None, oracle=False)
    assert np.array_equal(load_predictions(tmp_path / "fixed").pred, sel)


def test_a_floor_csv_must_hold_one_loso_run(tmp_path):
    rows, y = _truth()
    head = ["input", "protocol", "seed", "dataset", "subject", "name", "label", "pred"]
    one = [["flow", "loso", 0, d, s, f"{s}_{i} .png", int(y[i]), int(y[i])] for i, (d, s) in enumerate(rows)]
    _write_csv(tmp_path / "one.csv", head, one)
    p = load_predictions(tmp_path / "one.csv")
    assert p.selection == "input=flow seed=0" and len(p.pred) == len(rows) and p.seed == 0
    _write_csv(tmp_path / "two.csv", head, one + [["tiles", *r[1:]] for r in one])
    with pytest.raises(ValueError, match="holds 2 runs .*input=tiles"):
        load_predictions(tmp_path / "two.csv")
    _write_csv(tmp_path / "kfold.csv", head, [[r[0], "kfold:5", *r[2:]] for r in one])
    with pytest.raises(ValueError, match="a kfold:5 run"):
        load_predictions(tmp_path / "kfold.csv")
    _write_csv(tmp_path / "bad.csv", ["dataset", "subject", "label"], [["casme2", "s0", 1]])
    with pytest.raises(ValueError, match="needs the columns dataset, subject, label, pred"):
        load_predictions(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="no such run folder"):
        load_predictions(tmp_path / "missing")


def test_mer_compare_on_the_command_line(tmp_path, capsys):
    from mer.cli import main

    rows, y = _truth()
    head = ["dataset", "subject", "label", "pred"]
    _write_csv(tmp_path / "a.csv", head, [[d, s, int(t), int(t)] for (d, s), t in zip(rows, y, strict=True)])
    _write_csv(tmp_path / "b.csv", head, [[d, s, int(t), 0] for (d, s), t in zip(rows, y, strict=True)])
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "a.csv"), "--against", str(tmp_path / "b.csv"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| all | 15 |" in text and "A is ahead of B" in text
    assert json.loads(out.read_text())["sets"]["all"]["uf1"]["diff"] > 0.5
    assert main(["compare", str(tmp_path / "a.csv"), "--against", str(tmp_path / "nope.csv")]) == 2
    assert "mer compare: error:" in capsys.readouterr().err
    # a run in two parts (joined with +) against the complete b, and a part alone with --common-subjects
    _write_csv(tmp_path / "a1.csv", head, [[d, s, int(t), int(t)] for (d, s), t in zip(rows[:30], y[:30], strict=True)])
    _write_csv(tmp_path / "a2.csv", head, [[d, s, int(t), int(t)] for (d, s), t in zip(rows[30:], y[30:], strict=True)])
    joined = f"{tmp_path / 'a1.csv'}+{tmp_path / 'a2.csv'}"
    assert main(["compare", joined, "--against", str(tmp_path / "b.csv"), "--out", str(out)]) == 0
    assert "| all | 15 |" in capsys.readouterr().out and json.loads(out.read_text())["sets"]["all"]["uf1"]["diff"] > 0.5
    assert main(["compare", str(tmp_path / "a2.csv"), "--against", str(tmp_path / "b.csv")]) == 2
    assert "hold different subjects" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a2.csv"), "--against", str(tmp_path / "b.csv"), "--common-subjects"]) == 0
    text = capsys.readouterr().out
    assert "| all | 9 |" in text and "scored on the 9 subjects every run holds" in text

"""UF1/UAR against scikit-learn, absent classes, per-dataset shares, the MEGC log."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_cm
from sklearn.metrics import f1_score, recall_score

from mer.data import Sample
from mer.metrics import breakdown, confusion_matrix, megc_log_lines, per_class, uf1_uar, write_megc_log


def _sk(yt, yp, labels=(0, 1, 2)):
    kw = dict(labels=list(labels), average="macro", zero_division=0)
    return f1_score(yt, yp, **kw), recall_score(yt, yp, **kw)


@pytest.mark.parametrize("seed", range(30))
def test_equals_sklearn_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    yt, yp = rng.integers(0, 3, n), rng.integers(0, 3, n)
    if seed % 3 == 0:
        yt[yt == 2] = 0  # class 2 absent from the truth
    if seed % 4 == 0:
        yp[yp == 1] = 2  # class 1 never predicted
    if seed % 5 == 0:
        yt[:], yp[yp == 0] = 1, 1  # one class only in the truth
    np.testing.assert_allclose(uf1_uar(yt, yp), _sk(yt, yp), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(confusion_matrix(yt, yp), sk_cm(yt, yp, labels=[0, 1, 2]))


def test_absent_class_counts_as_zero():
    # perfect on the two classes present; the absent third still counts: 2/3, not 1
    uf1, uar = uf1_uar([0, 0, 1, 1], [0, 0, 1, 1])
    assert uf1 == pytest.approx(2 / 3) and uar == pytest.approx(2 / 3)
    pc = per_class([0, 0, 1], [0, 2, 1])
    np.testing.assert_allclose(pc["f1"], [2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(pc["recall"], [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(pc["support"], [2, 1, 0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="not in labels"):
        uf1_uar([0, 1], [0, 3])
    with pytest.raises(ValueError, match="entries"):
        uf1_uar([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        uf1_uar([], [])


def test_breakdown_is_pooled_not_averaged():
    rng = np.random.default_rng(1)
    yt, yp = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    ds = np.array(["casme2"] * 20 + ["smic"] * 25 + ["samm"] * 15)
    b = breakdown(yt, yp, ds)
    assert list(b) == ["all", "casme2", "smic", "samm"]
    assert b["all"]["uf1"] == pytest.approx(_sk(yt, yp)[0])
    m = ds == "smic"
    assert (b["smic"]["uf1"], b["smic"]["uar"]) == pytest.approx(_sk(yt[m], yp[m]))
    assert b["smic"]["n"] == 25 and np.sum(b["samm"]["confusion"]) == 15


def _s(db, subj, clip, label):
    return Sample(db, subj, clip, (), 0, 0, 0, label=label)


def test_megc_log(tmp_path):
    samples = [
        _s("casme2", "sub01", "EP02_01f", 1),
        _s("casme2", "sub01", "EP19_05f", 0),
        _s("smic", "s01", "s01_ne_01", 0),
        _s("casme2", "sub02", "EP01_11f", 2),
    ]
    assert megc_log_lines(samples, [1, 2, 0, 2]) == [
        "casme2 sub01",
        "EP02_01f 1 1",
        "EP19_05f 0 2",
        "smic s01",
        "s01_ne_01 0 0",
        "casme2 sub02",
        "EP01_11f 2 2",
    ]
    p = write_megc_log(tmp_path / "log" / "megc.txt", samples, [0, 0, 0, 0])
    assert p.read_text().splitlines()[1] == "EP02_01f 1 0"
    with pytest.raises(ValueError, match="predictions"):
        megc_log_lines(samples, [0])

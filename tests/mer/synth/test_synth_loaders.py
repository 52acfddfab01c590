"""The generated data through the package's loaders (mer.data): parsed and validated, 0 problems."""

from __future__ import annotations

import csv
import warnings

import pytest

from mer.data import load_dataset, megc2019_composite


def _load(fn, *a, **kw):
    """Call a loader; DatasetWarnings are collected (they are notes, e.g. estimated apexes)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*a, **kw)
    return out, [str(w.message) for w in caught]


@pytest.mark.parametrize("ds,n,others", [("casme2", 7, 1), ("samm", 7, 1), ("smic", 6, 0)])
def test_each_dataset_loads_without_problems(tiny, ds, n, others):
    out, _, _ = tiny
    samples, notes = _load(load_dataset, ds, out / ds)  # on_error='raise': any problem would raise
    assert len(samples) == n
    assert sum(s.label is None for s in samples) == others
    assert all(not s.cropped and len(s.frames) == s.offset - s.onset + 1 for s in samples)
    assert not [m for m in notes if "problem" in m], notes
    if ds != "smic":  # the one '/' (CASME II) or -1 (SAMM) apex is estimated, as documented
        assert sum(s.apex_is_estimated for s in samples) == 1
    else:
        assert all(s.apex_is_estimated for s in samples)


def test_composite_with_generated_list(tiny):
    out, _, _ = tiny
    samples, notes = _load(
        megc2019_composite,
        casme2=out / "casme2",
        samm=out / "samm",
        smic=out / "smic",
        sample_list=out / "megc2019_composite.csv",
    )
    with open(out / "megc2019_composite.csv", newline="") as f:
        rows = [(r["dataset"], r["subject"], r["clip"], int(r["label"])) for r in csv.DictReader(f)]
    assert [(s.dataset, s.subject, s.clip, s.label) for s in samples] == rows
    assert not [m for m in notes if "problem" in m], notes
    # the true apex of the written annotation is the one the loader uses (CASME II / SAMM)
    with open(out / "casme2" / "synth_truth.csv", newline="") as f:
        truth = {r["clip"]: r for r in csv.DictReader(f)}
    for s in samples:
        if s.dataset == "casme2" and not s.apex_is_estimated:
            assert s.apex == int(truth[s.clip]["apex_noted"])

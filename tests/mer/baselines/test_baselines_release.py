"""The linear floor's real-data source on the public HTNet release, when MER_HTNET_RELEASE points at it
(CI: ../shared/data/htnet_release when present); skipped otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = os.environ.get("MER_HTNET_RELEASE")
pytestmark = pytest.mark.skipif(
    not ROOT or not Path(ROOT).is_dir(), reason="MER_HTNET_RELEASE does not point at the HTNet release's data"
)


@pytest.fixture(scope="module")
def release():
    from mer.baselines.sources import release_features

    return release_features(ROOT, ["flow", "tiles"])


def test_release_composite_shape(release):
    x, y = release.x["flow"], release.y
    assert x.shape == (442, 3, 28, 28) and x.min() == 0 and x.max() == 255
    assert release.x["tiles"].shape == (442, 3, 28, 28) and not np.array_equal(release.x["tiles"], x)
    assert release.source["reader"] == "mer.data.load_htnet_release" and release.source["landmarks"] == "shipped"
    assert np.bincount(y).tolist() == [250, 109, 83]
    assert len(set(zip(release.datasets, release.subjects, strict=True))) == 68
    assert {d: int((release.datasets == d).sum()) for d in ("casme2", "samm", "smic")} == {
        "casme2": 145,
        "samm": 133,
        "smic": 164,
    }


def test_loso_folds_are_the_releases(release):
    from mer.baselines.linear import protocol_folds
    from mer.data import load_htnet_release

    ours = {
        f.name.split("/", 1)[1]: sorted(release.names[f.test])
        for f in protocol_folds(release.datasets, release.subjects, "loso")
    }
    rel = load_htnet_release(ROOT)
    assert ours == {s: sorted(rel.names[t]) for s, t in rel.folds.items()}
    theirs: dict[str, list] = {}
    for line in (Path(ROOT) / "loso_test_lists.txt").read_text().splitlines():
        subject, _, _, name = line.split("/", 3)
        theirs.setdefault(subject, []).append(name)
    assert ours == {k: sorted(v) for k, v in theirs.items()}


def test_channel_order_is_u_v_strain(release):
    # class-mean maps centred per image: u (horizontal) is left-right antisymmetric, v symmetric, and
    # surprise moves the brows up (v < 0 in the top rows)
    x = release.x["flow"].astype(np.float64)
    c = x - np.median(x.reshape(len(x), 3, -1), axis=2)[..., None, None]
    m = c.mean(0)
    corr = [np.corrcoef(m[i].ravel(), m[i][:, ::-1].ravel())[0, 1] for i in range(3)]
    assert corr[0] < -0.5 and corr[1] > 0.5
    assert c[release.y == 2, 1, :10].mean() < -10 and (x[:, 2] >= 0).all()


@pytest.mark.parametrize("inp", ["flow", "tiles"])
def test_floor_is_well_above_chance(release, inp):
    from mer.baselines.linear import run_protocol

    r = run_protocol(release.x[inp], release.y, release.datasets, release.subjects, "kfold:2", seeds=[0])
    assert r["summary"]["all"]["uf1_mean"] > 0.55  # chance ~0.33; LOSO ~0.69 (benchmarks/results/real-linear-floor-*)

"""load_htnet_release: reading, tile construction and every validation error, on tiny folders in the
release's layout; and the real copy when MER_HTNET_RELEASE points at it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from htnet_fixtures import SAMPLES, flow_dir, flow_name, make_release

from mer.data import DatasetError, HtnetReleaseError, load_htnet_release
from mer.data.htnet_landmarks import (
    FALLBACK_LANDMARKS,
    batched_nms,
    clip_landmarks,
    mtcnn_landmarks,
    nms,
    release_tiles,
)
from mer.data.htnet_release import SHIPPED_LANDMARKS, read_shipped_landmarks

FALLBACK_INT = np.array([[9, 11], [21, 10], [15, 17], [10, 21], [20, 21]])


@pytest.fixture
def rel_root(tmp_path):
    return make_release(tmp_path / "rel")


def load(root, **kw):
    kw.setdefault("landmarks", "fallback")
    kw.setdefault("check_counts", False)
    return load_htnet_release(root, **kw)


# ------------------------------------------------------------------------------------------- reading


def test_loads_fields_in_sheet_order(rel_root):
    rel = load(rel_root)
    assert len(rel) == len(SAMPLES)
    assert rel.names.tolist() == [flow_name(s, c) for _, s, c, _ in SAMPLES]
    assert rel.names[0] == "sub01_EP02_01f .png"  # the space before .png, as on disk
    assert rel.subjects.tolist() == [s for _, s, _, _ in SAMPLES]
    assert rel.datasets.tolist() == [d for d, _, _, _ in SAMPLES]
    assert rel.labels.dtype == np.int64 and rel.labels.tolist() == [lab for *_, lab in SAMPLES]
    assert rel.flow.shape == (7, 28, 28, 3) and rel.flow.dtype == np.uint8
    for i, n in enumerate(rel.names):
        assert np.array_equal(rel.flow[i], cv2.imread(str(flow_dir(rel_root) / n)))
    assert rel.landmarks.shape == (7, 5, 2) and (rel.landmarks == FALLBACK_INT).all()
    assert rel.landmark_mode == "fallback" and not rel.landmark_found.any()
    assert rel.tiles.shape == (7, 28, 28, 3) and rel.tiles.dtype == np.uint8
    assert all(Path(p).is_file() for p in rel.face_paths)
    assert rel.apex_faces.shape == (7, 224, 224, 3)
    with pytest.raises(ValueError):
        rel.labels[0] = 2  # read-only


def test_folds_are_the_subjects_samples(rel_root):
    rel = load(rel_root)
    assert list(rel.folds) == ["sub01", "sub02", "006", "007", "s1", "s2"]
    assert rel.folds["sub01"].tolist() == [0, 1]
    for s, test in rel.folds.items():
        assert (rel.subjects[test] == s).all() and (rel.subjects == s).sum() == len(test)
    train, test = rel.fold("sub01")
    assert test.tolist() == [0, 1] and train.tolist() == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("folds", ["list", "dirs"])
def test_clone_layout_and_fold_folders(tmp_path, folds):
    root = make_release(tmp_path / "clone", clone=True, folds=folds)
    rel = load(root)
    assert len(rel) == 7 and sorted(rel.folds) == sorted({s for _, s, _, _ in SAMPLES})
    assert rel.folds["s1"].tolist() == [5]


# ------------------------------------------------------------------------------------------ tiles


def test_tiles_index_rows_with_x_as_the_release_does(rel_root):
    """Crop k = flow[x-7:x+7, y-7:y+7] (x as the row), tiled [[0, 1], [3, 4]]; nose (2) unused."""
    lm = np.array([[8, 20], [20, 8], [14, 14], [9, 10], [18, 16]])
    names = [flow_name(s, c) for _, s, c, _ in SAMPLES]
    rel = load(rel_root, landmarks={n: lm for n in names})
    f = rel.flow[3]
    t = rel.tiles[3]
    assert np.array_equal(t[:14, :14], f[1:15, 13:27])  # landmark 0 = (x 8, y 20): rows 1..14
    assert np.array_equal(t[:14, 14:], f[13:27, 1:15])  # landmark 1
    assert np.array_equal(t[14:, :14], f[2:16, 3:17])  # landmark 3
    assert np.array_equal(t[14:, 14:], f[11:25, 9:23])  # landmark 4
    # the same through cv2.hconcat / vconcat as the release writes it
    crops = [f[r - 7 : r + 7, c - 7 : c + 7] for r, c in lm]
    ref = cv2.vconcat([cv2.hconcat([crops[0], crops[1]]), cv2.hconcat([crops[3], crops[4]])])
    assert np.array_equal(t, ref)


def test_landmark_clipping_as_the_release():
    raw = np.array([[3.2, 25.9], [12.9, 7.0], [21.0, 20.999], [6.99, 21.01], [-4.0, 100.0]], np.float32)
    assert clip_landmarks(raw).tolist() == [[7, 21], [12, 7], [21, 20], [7, 21], [7, 21]]
    assert clip_landmarks(FALLBACK_LANDMARKS).tolist() == FALLBACK_INT.tolist()
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        clip_landmarks(np.zeros((4, 2)))


def test_release_tiles_refuses_unclipped_landmarks():
    flow = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(ValueError, match="clip_landmarks"):
        release_tiles(flow, np.full((5, 2), 3))


def test_given_landmarks_are_clipped(rel_root):
    names = [flow_name(s, c) for _, s, c, _ in SAMPLES]
    rel = load(rel_root, landmarks={n: np.full((5, 2), 30.5) for n in names})
    assert (rel.landmarks == 21).all() and rel.landmark_mode == "given"
    with pytest.raises(HtnetReleaseError, match="no entry for 1 sample"):
        load(rel_root, landmarks={n: np.full((5, 2), 10.0) for n in names[1:]})


# -------------------------------------------------------------------------------------- landmarks


def test_shipped_landmarks_table():
    table = read_shipped_landmarks()
    assert len(table) == 442
    pts = np.stack([p for p, _ in table.values()])
    assert pts.min() >= 7 and pts.max() <= 21
    with open(SHIPPED_LANDMARKS, newline="") as f:
        rows = list(csv.DictReader(f))
    n_found = sum(r["source"] == "mtcnn" for r in rows)
    assert 250 <= n_found <= 290  # the release's MTCNN finds about 60 % of the 28x28 faces
    for r in rows:  # the ints are the release's clipping of the raw floats
        raw = np.array([[float(r[f"raw_{a}{k}"]) for a in "xy"] for k in range(5)], np.float32)
        assert clip_landmarks(raw).tolist() == table[r["flow_file"]][0].tolist()
        if r["source"] == "fallback":
            assert np.allclose(raw, FALLBACK_LANDMARKS)


def test_shipped_landmarks_do_not_cover_other_names(rel_root):
    # five of the fixture's names are real release names, the two SMIC ones are not
    with pytest.raises(
        HtnetReleaseError,
        match=r"no shipped landmarks for 2 sample.*'s1_s1_sur_01 \.png'.*"
        "'mtcnn'.*'fallback'",
    ):
        load(rel_root, landmarks="shipped")


def test_shipped_landmarks_are_used_by_name(tmp_path):
    root = make_release(tmp_path / "r", SAMPLES[:5])
    rel = load(root, landmarks="shipped")
    table = read_shipped_landmarks()
    for i, n in enumerate(rel.names):
        assert rel.landmarks[i].tolist() == table[n][0].tolist() and rel.landmark_found[i] == table[n][1]
        assert np.array_equal(rel.tiles[i], release_tiles(rel.flow[i], table[n][0]))


def test_unknown_landmark_mode(rel_root):
    with pytest.raises(ValueError, match="landmarks must be one of"):
        load(rel_root, landmarks="dlib")


def test_mtcnn_without_facenet_names_the_install(rel_root, monkeypatch):
    import importlib.util
    import sys

    monkeypatch.delitem(sys.modules, "facenet_pytorch", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "facenet_pytorch" else real(name, *a)
    )
    with pytest.raises(HtnetReleaseError, match="pip install --no-deps facenet-pytorch"):
        load(rel_root, landmarks="mtcnn")


def test_mtcnn_mode_runs_and_falls_back_on_noise(rel_root):
    import importlib.util

    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch not installed (pip install --no-deps facenet-pytorch==2.5.2)")
    rel = load(rel_root, landmarks="mtcnn")
    assert rel.landmark_mode == "mtcnn"
    assert not rel.landmark_found.any() and (rel.landmarks == FALLBACK_INT).all()  # noise: no face
    raw, found = mtcnn_landmarks([np.zeros((28, 28, 3), np.uint8)])
    assert not found[0] and np.allclose(raw[0], FALLBACK_LANDMARKS)


def _nms_reference(boxes, scores, thr):
    b, s = boxes.numpy().astype(np.float64), scores.numpy()
    order = np.argsort(-s, kind="stable")
    keep, dead = [], set()
    for a, i in enumerate(order):
        if i in dead:
            continue
        keep.append(int(i))
        for j in order[a + 1 :]:
            w = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = w * h
            union = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1]) + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter
            if inter / union > thr:
                dead.add(j)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_shim_matches_a_plain_reference(seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(40, 2, generator=g) * 20
    wh = torch.rand(40, 2, generator=g) * 10 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(40, generator=g)
    for thr in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, thr).tolist() == _nms_reference(boxes, scores, thr)
    idx = torch.randint(0, 3, (40,), generator=g)
    kept = batched_nms(boxes, scores, idx, 0.5).tolist()
    for k in range(3):  # within each group: the plain NMS of that group
        sel = torch.nonzero(idx == k).flatten()
        want = sel[_nms_reference(boxes[sel], scores[sel], 0.5)].tolist()
        assert [i for i in kept if idx[i] == k] == want
    assert batched_nms(boxes[:0], scores[:0], idx[:0], 0.5).numel() == 0


def test_import_shim_stands_in_for_a_missing_requests_and_restores_sys_modules(monkeypatch):
    """facenet-pytorch imports requests (for downloads MTCNN never makes); a fresh venv may lack it."""
    import importlib.util
    import sys

    from mer.data import htnet_landmarks

    monkeypatch.delitem(sys.modules, "requests", raising=False)
    monkeypatch.delitem(sys.modules, "requests.adapters", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "requests" else real(name, *a))
    before = {n: sys.modules.get(n) for n in ("requests", "torchvision", "torchvision.ops.boxes")}
    with htnet_landmarks._facenet_import_shim():
        import requests
        from requests.adapters import HTTPAdapter
        from torchvision.ops.boxes import batched_nms as shimmed

        assert shimmed is batched_nms and requests.adapters.HTTPAdapter is HTTPAdapter
        with pytest.raises(RuntimeError, match="downloads are not available"):
            HTTPAdapter()
    assert {n: sys.modules.get(n) for n in before} == before


# ------------------------------------------------------------------------------------- validation


def test_root_not_a_folder(tmp_path):
    with pytest.raises(HtnetReleaseError, match=r"root .*nope is not a folder; point root at a clone"):
        load(tmp_path / "nope")


def test_root_without_the_release(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(
        HtnetReleaseError,
        match=r"is not the HTNet release: combined_3_class2_for_optical_flow"
        r"\.csv, STSNet_whole_norm_u_v_os/, combined_datasets_whole/ not found",
    ):
        load(tmp_path / "x")


def test_error_is_a_dataset_error(tmp_path):
    assert issubclass(HtnetReleaseError, DatasetError)


def test_sheet_row_without_flow_file(rel_root):
    (flow_dir(rel_root) / "006_006_1_2 .png").unlink()
    with pytest.raises(HtnetReleaseError, match=r"flow file .*006_006_1_2 \.png is missing"):
        load(rel_root)


def test_missing_space_is_named(rel_root):
    d = flow_dir(rel_root)
    (d / "006_006_1_2 .png").rename(d / "006_006_1_2.png")
    with pytest.raises(HtnetReleaseError) as e:
        load(rel_root)
    msg = str(e.value)
    assert "the release's names have a space before .png" in msg
    assert "006_006_1_2.png: not in the sheet (extra file" in msg  # also reported as extra


def test_missing_face(rel_root):
    (rel_root / "combined_datasets_whole" / "s2_s2_po_05.jpg").unlink()
    with pytest.raises(HtnetReleaseError, match=r"apex face .*s2_s2_po_05\.jpg is missing"):
        load(rel_root)


def test_extra_file(rel_root):
    (flow_dir(rel_root) / "sub99_EP01 .png").write_bytes(b"x")
    with pytest.raises(HtnetReleaseError, match=r"sub99_EP01 \.png: not in the sheet \(extra file; remove it"):
        load(rel_root)


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda b: b"", "zero-byte file"),
        (lambda b: b[: len(b) // 3], "truncated PNG"),
        (lambda b: b"not an image at all", "not a decodable image"),
    ],
)
def test_unreadable_flow(rel_root, damage, reason):
    p = flow_dir(rel_root) / "007_007_3_1 .png"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(HtnetReleaseError, match=rf"flow image .*007_007_3_1 \.png: {reason}"):
        load(rel_root)


def test_truncated_face(rel_root):
    p = rel_root / "combined_datasets_whole" / "sub02_EP01_11f.jpg"
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(HtnetReleaseError, match=r"apex face .*sub02_EP01_11f\.jpg: truncated JPEG"):
        load(rel_root)


def test_wrong_image_size(rel_root):
    cv2.imwrite(str(flow_dir(rel_root) / "s1_s1_sur_01 .png"), np.zeros((30, 28, 3), np.uint8))
    cv2.imwrite(str(rel_root / "combined_datasets_whole" / "s1_s1_sur_01.jpg"), np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(HtnetReleaseError) as e:
        load(rel_root)
    assert "s1_s1_sur_01 .png: 28x30 pixels, expected 28x28" in str(e.value)
    assert "s1_s1_sur_01.jpg: 100x100 pixels, expected 224x224" in str(e.value)


def test_sheet_missing_column(rel_root):
    p = rel_root / "combined_3_class2_for_optical_flow.csv"
    p.write_text(p.read_text().replace("filename_o", "clip", 1))
    with pytest.raises(HtnetReleaseError, match=r"has no column\(s\) filename_o"):
        load(rel_root)


def test_sheet_bad_rows(rel_root):
    p = rel_root / "combined_3_class2_for_optical_flow.csv"
    lines = p.read_text().splitlines()
    lines[2] = lines[2].replace(",0,,", ",5,,")  # bad label
    lines[3] = lines[3].replace("casme2", "casme9")  # bad dataset
    lines.append(lines[1])  # duplicate
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(HtnetReleaseError) as e:
        load(rel_root)
    msg = str(e.value)
    assert "line 3: label '5' is not 0, 1 or 2" in msg
    assert "line 4: dataset 'casme9'" in msg
    assert "line 9: duplicate of line 2" in msg


def test_counts_not_the_composite(rel_root):
    with pytest.raises(
        HtnetReleaseError,
        match=r"7 samples, 6 subjects, labels 3/2/2; the MEGC2019 composite "
        r"has 442 samples, 68 subjects, labels 250/109/83.*check_counts=False",
    ):
        load_htnet_release(rel_root, landmarks="fallback")


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t: t.replace("006/u_test/0/", "007/u_test/0/"), r"listed in subject 007's fold but belongs to 006"),
        (lambda t: t.replace("s1/u_test/2/", "s1/u_test/1/"), r"listed under label 1 but the sheet says 2"),
        (lambda t: "\n".join(t.splitlines()[1:]), r"1 sample\(s\) are in no fold's test set: sub01_EP02_01f \.png"),
        (lambda t: t + t.splitlines()[0] + "\n", r"listed twice"),
        (lambda t: t + "s9/u_test/0/s9_x .png\n", r"'s9_x \.png' is not a sample of the sheet"),
        (lambda t: t + "garbage line\n", r"line 8: 'garbage line' is not <subject>/u_test/<label>/<flow file>"),
    ],
)
def test_fold_list_errors(rel_root, edit, match):
    p = rel_root / "loso_test_lists.txt"
    p.write_text(edit(p.read_text()))
    with pytest.raises(HtnetReleaseError, match=match):
        load(rel_root)


def test_no_fold_list(tmp_path):
    root = make_release(tmp_path / "r", folds="none")
    with pytest.raises(
        HtnetReleaseError,
        match=r"no fold list .*loso_test_lists\.txt or the release's "
        r"three_norm_u_v_os",
    ):
        load(root)


def test_one_message_lists_every_problem(rel_root):
    d = flow_dir(rel_root)
    (d / "006_006_1_2 .png").unlink()
    (d / "007_007_3_1 .png").unlink()
    with pytest.raises(HtnetReleaseError) as e:
        load(rel_root)
    assert "2 problem(s)" in str(e.value) and len(e.value.problems) == 2
    assert "Restore the missing files" in str(e.value)


# ------------------------------------------------------------------------------------ the real copy

REAL = os.environ.get("MER_HTNET_RELEASE")


@pytest.mark.skipif(
    not REAL,
    reason="MER_HTNET_RELEASE is not set (point it at the HTNet release, e.g. "
    "../shared/data/htnet_release, to test on the real copy)",
)
def test_real_release():
    rel = load_htnet_release(REAL)
    assert len(rel) == 442 and len(rel.folds) == 68
    assert [int((rel.labels == k).sum()) for k in range(3)] == [250, 109, 83]
    assert {d: len(set(rel.subjects[rel.datasets == d])) for d in ("casme2", "samm", "smic")} == {
        "casme2": 24,
        "samm": 28,
        "smic": 16,
    }
    assert int(rel.landmark_found.sum()) == sum(f for _, f in read_shipped_landmarks().values())
    assert sorted(np.concatenate(list(rel.folds.values())).tolist()) == list(range(442))
    for s, test in rel.folds.items():
        assert set(test.tolist()) == set(np.flatnonzero(rel.subjects == s).tolist())
    for i in range(0, 442, 17):  # tiles = the release's crops, computed independently here
        f, (a, b, _, c, d) = rel.flow[i], rel.landmarks[i]

        def crop(p, f=f):
            return f[p[0] - 7 : p[0] + 7, p[1] - 7 : p[1] + 7]

        assert np.array_equal(rel.tiles[i], np.vstack([np.hstack([crop(a), crop(b)]), np.hstack([crop(c), crop(d)])]))


@pytest.mark.slow
@pytest.mark.skipif(
    not REAL,
    reason="MER_HTNET_RELEASE is not set (point it at the HTNet release, e.g. "
    "../shared/data/htnet_release, to test on the real copy)",
)
def test_real_release_mtcnn_reproduces_the_shipped_landmarks():
    import importlib.util

    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip("facenet-pytorch not installed (pip install --no-deps facenet-pytorch==2.5.2)")
    shipped = load_htnet_release(REAL)
    fresh = load_htnet_release(REAL, landmarks="mtcnn")
    assert np.array_equal(fresh.landmarks, shipped.landmarks)
    assert np.array_equal(fresh.landmark_found, shipped.landmark_found)
    assert np.array_equal(fresh.tiles, shipped.tiles)


def test_short_sheet_row_is_reported_not_a_crash(rel_root):
    p = rel_root / "combined_3_class2_for_optical_flow.csv"
    p.write_text(p.read_text() + "casme2,sub09\n")
    with pytest.raises(HtnetReleaseError, match=r"line 9: label '' is not 0, 1 or 2"):
        load(rel_root)

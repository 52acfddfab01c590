"""The batch pipeline: outputs and units, regions, cache hits/invalidation, interrupted writes, workers."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_prep_flow import shifted_texture

import mer.preprocess.cache as cache_mod
import mer.preprocess.pipeline as pipe
import mer.preprocess.regions as regions_mod
from mer.data import Sample
from mer.preprocess import FaceNotFoundError, PrepConfig, PrepError, detect_face, prepare, prepare_pair
from mer.preprocess.face import expand_box
from mer.preprocess.regions import tile_regions, window_boxes

FAST = PrepConfig(size=16, face_size=64, flow="dis", regions="canonical")


def make_samples(root: Path, n=3, dx=0.8, size=80) -> list[Sample]:
    out = []
    for i in range(n):
        a, b = shifted_texture(size, dx=dx, dy=0.0, seed=i)
        d = root / f"sub{i:02d}" / "EP01"
        d.mkdir(parents=True)
        paths = []
        for k, img in enumerate([a, a, b, b]):  # frames 10..13, apex 12
            p = d / f"reg_img{10 + k}.png"
            cv2.imwrite(str(p), img)
            paths.append(str(p))
        out.append(
            Sample("casme2", f"sub{i:02d}", "EP01", tuple(paths), 10, 12, 13, label=i % 3, cropped=True, root=str(root))
        )
    return out


def test_outputs_shapes_units_and_meta(tmp_path):
    samples = make_samples(tmp_path / "data", dx=0.8)
    cfg = PrepConfig(size=16, face_size=64, flow="tvl1", regions="canonical")
    ps = prepare(samples, cfg, tmp_path / "cache", progress=False)
    assert ps.face.shape == (3, 3, 16, 16) and ps.regions.shape == (3, 3, 16, 16)
    assert ps.face.dtype == np.float32 and ps.regions.dtype == np.float32
    # a 0.8 px shift at 80 px is 0.8 * 64/80 px at face_size, and 0.8 * 16/80 = 0.16 px on the output grid
    u = np.median(ps.face[:, 0, 3:-3, 3:-3])
    assert u == pytest.approx(0.16, abs=0.02)
    assert abs(np.median(ps.face[:, 1])) < 0.02
    assert np.median(ps.face[:, 2]) < 0.05  # translation: almost no strain
    assert np.median(ps.regions[:, 0]) == pytest.approx(0.16, abs=0.02)
    m = ps.meta[0]
    assert m["face_source"] == "dataset crop" and m["region_source"] == "canonical" and m["flow"] == "tvl1"
    assert set(m["region_boxes"]) == {"left_eye", "right_eye", "left_mouth_corner", "right_mouth_corner"}
    assert ps.labels.tolist() == [0, 1, 2]
    ps.save(tmp_path / "set.npz")
    with np.load(tmp_path / "set.npz") as z:
        assert z["face"].shape == (3, 3, 16, 16) and list(z["uid"]) == [s.uid for s in samples]


def test_motion_compensation_cancels_global_shift(tmp_path):
    samples = make_samples(tmp_path / "data", n=1, dx=1.0)
    ps = prepare(samples, PrepConfig(**{**FAST.to_dict(), "motion_compensation": True}), tmp_path / "c", progress=False)
    assert abs(np.median(ps.face[0, 0])) < 0.02
    assert ps.meta[0]["motion_compensation"]["subtracted"][0] == pytest.approx(0.8, abs=0.1)


def test_region_tiling_layout():
    F = 64
    maps = np.zeros((3, F, F), np.float32)
    pts = np.array([[16, 16], [48, 16], [16, 48], [48, 48]], float)
    for k, (x, y) in enumerate(pts):
        maps[:, int(y) - 16 : int(y) + 16, int(x) - 16 : int(x) + 16] = k + 1
    boxes = window_boxes(pts, F)
    assert boxes == [(0, 0, 32, 32), (32, 0, 32, 32), (0, 32, 32, 32), (32, 32, 32, 32)]
    out = tile_regions(maps, boxes, 8)
    np.testing.assert_array_equal(out[0], [[1] * 4 + [2] * 4] * 4 + [[3] * 4 + [4] * 4] * 4)
    # windows near the border are shifted inside, never padded
    assert window_boxes(np.array([[2.0, 70.0]]), F) == [(0, 32, 32, 32)]


def test_landmark_source_geometry(monkeypatch):
    lm = np.zeros((68, 2))
    lm[36:42] = [20, 30]
    lm[42:48] = [44, 30]
    lm[48], lm[54] = [24, 50], [40, 50]
    monkeypatch.setattr(regions_mod, "_landmarks68", lambda grey: lm)
    pts, src = regions_mod.region_points(np.zeros((64, 64), np.uint8), "landmarks")
    assert src == "landmarks"
    np.testing.assert_allclose(pts, [[20, 30], [44, 30], [24, 50], [40, 50]])
    monkeypatch.setattr(regions_mod, "_landmarks68", lambda grey: None)
    assert regions_mod.region_points(np.zeros((64, 64), np.uint8), "landmarks")[1] == "canonical (landmarks failed)"


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    samples = make_samples(tmp_path / "data", n=2)
    first = prepare(samples, FAST, tmp_path / "c", progress=False)
    calls = []
    real = pipe.process_sample
    monkeypatch.setattr(pipe, "process_sample", lambda *a: calls.append(a) or real(*a))
    again = prepare(samples, FAST, tmp_path / "c", progress=False)
    assert calls == [] and np.array_equal(first.face, again.face)
    for change in [
        {"size": 8},
        {"flow": "farneback"},
        {"face_margin": 0.2},
        {"motion_compensation": True},
        {"smic_apex": "max_diff"},
    ]:
        calls.clear()
        out = prepare(samples, PrepConfig(**{**FAST.to_dict(), **change}), tmp_path / "c", progress=False)
        assert len(calls) == 2, change
        assert out.face.shape[-1] == change.get("size", 16)
    # a changed frame file invalidates too (size/mtime are part of the key)
    calls.clear()
    img = cv2.imread(samples[0].frames[2])
    cv2.imwrite(samples[0].frames[2], np.roll(img, 1, axis=1))
    os.utime(samples[0].frames[2], ns=(1, 1))
    prepare(samples, FAST, tmp_path / "c", progress=False)
    assert len(calls) == 1


def test_interrupted_write_recovers(tmp_path, monkeypatch):
    samples = make_samples(tmp_path / "data", n=3)
    real_replace = os.replace
    n = {"calls": 0}

    def flaky(src, dst):
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt  # killed between writing the temp file and moving it into place
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare(samples, FAST, tmp_path / "c", progress=False)
    monkeypatch.setattr(cache_mod.os, "replace", real_replace)
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".npz"]) == 1 and not [p for p in files if p.suffix == ".tmp"]
    resumed = prepare(samples, FAST, tmp_path / "c", progress=False)
    fresh = prepare(samples, FAST, tmp_path / "fresh", progress=False)
    np.testing.assert_array_equal(resumed.face, fresh.face)
    # a corrupt entry (e.g. truncated by a full disk) is reported, removed and recomputed
    entry = next((tmp_path / "c").rglob("*.npz"))
    entry.write_bytes(entry.read_bytes()[:50])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = prepare(samples, FAST, tmp_path / "c", progress=False)
    np.testing.assert_array_equal(again.face, fresh.face)


def test_workers_match_serial(tmp_path):
    samples = make_samples(tmp_path / "data", n=4)
    serial = prepare(samples, FAST, tmp_path / "a", progress=False, workers=1)
    par = prepare(samples, FAST, tmp_path / "b", progress=False, workers=2)
    np.testing.assert_array_equal(serial.face, par.face)
    np.testing.assert_array_equal(serial.regions, par.regions)
    assert [s.uid for s in par.samples] == [s.uid for s in samples]


def test_failures_reported_together(tmp_path):
    samples = make_samples(tmp_path / "data", n=3)
    os.remove(samples[1].frames[0])
    broken = Sample("casme2", "sub09", "EP09", samples[0].frames, 10, 12, 13, root=str(tmp_path))  # raw: detect
    with pytest.raises(PrepError) as ei:
        prepare(samples + [broken], FAST, tmp_path / "c", progress=False)
    msg = str(ei.value)
    assert "2 of 4 sample(s)" in msg and "file not found" in msg and "no face found" in msg
    with pytest.warns(RuntimeWarning, match="Excluded"):
        ps = prepare(samples + [broken], FAST, tmp_path / "c", progress=False, on_error="warn")
    assert [s.uid for s in ps.samples] == [samples[0].uid, samples[2].uid] and len(ps.failed) == 2


def test_apex_rules(tmp_path):
    s = make_samples(tmp_path / "data", n=1)[0]
    est = Sample(**{**s.__dict__, "apex": 11, "apex_is_estimated": True})

    def meta(rule):
        return prepare([est], PrepConfig(**{**FAST.to_dict(), "smic_apex": rule}), tmp_path / "c", progress=False).meta[
            0
        ]["apex"]

    assert meta("sample") == 11 and meta("middle") == 11 and meta("max_diff") == 12


def test_face_detection_and_pair(tmp_path):
    blank = np.full((120, 120, 3), 127, np.uint8)
    assert detect_face(blank) is None
    assert detect_face(np.random.default_rng(0).integers(0, 255, (120, 120), dtype=np.uint8)) is None
    with pytest.raises(FaceNotFoundError, match="no face found in the onset image and the apex image.*face='full'"):
        prepare_pair(blank, blank, FAST)
    a, b = shifted_texture(80, dx=0.8, dy=0.0)
    face, regions, meta = prepare_pair(a, b, FAST, cropped=True)
    assert face.shape == (3, 16, 16) and regions.shape == (3, 16, 16)
    assert np.median(face[0]) == pytest.approx(0.16, abs=0.03)
    box = expand_box((10, 20, 40, 50), (100, 60), 0.1)
    assert box[2] == box[3] == 60 and box[0] == 0 and 0 <= box[1] <= 40


def test_config_validation():
    with pytest.raises(ValueError, match="size must be an even"):
        PrepConfig(size=27)
    with pytest.raises(ValueError, match="flow must be one of"):
        PrepConfig(flow="lk")


def test_stale_temp_files_removed(tmp_path):
    samples = make_samples(tmp_path / "data", n=1)
    (tmp_path / "c" / "ab").mkdir(parents=True)
    old, new = tmp_path / "c" / "ab" / ".deadbeef.x.tmp", tmp_path / "c" / "ab" / ".cafe.y.tmp"
    old.write_bytes(b"partial")
    new.write_bytes(b"being written by another run")
    os.utime(old, (1, 1))
    prepare(samples, FAST, tmp_path / "c", progress=False)
    assert not old.exists() and new.exists()


def test_non_square_dataset_crop_is_resized_whole(tmp_path):
    a, b = shifted_texture(96, dx=0.9, dy=0.0)
    a, b = a[:, 8:80], b[:, 8:80]  # 96 rows x 72 columns
    face, _, meta = prepare_pair(a, b, FAST, cropped=True)
    assert meta["face_box"] == [0, 0, 72, 96]
    assert np.median(face[0, 3:-3, 3:-3]) == pytest.approx(0.9 * 16 / 72, abs=0.03)  # u in output pixels

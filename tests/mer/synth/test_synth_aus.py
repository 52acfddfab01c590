"""AU motion is where it should be: the fields' peaks sit on their landmarks, and optical flow of a
rendered clip is largest in the AU's region."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mer.synth.aus import AU_PARTS, AU_REGION, au_field
from mer.synth.config import SynthConfig
from mer.synth.face import render_portrait
from mer.synth.identity import make_identity
from mer.synth.plan import plan_clip
from mer.synth.render import ClipRenderer, blink_profile, expression_profile, portrait_for


@pytest.fixture(scope="module")
def portrait():
    return render_portrait(make_identity(3))


def _region_center(lm, au):
    name = AU_REGION[au]
    if name.endswith("_"):
        return np.mean([lm[name + "l"], lm[name + "r"]], axis=0), [lm[name + "l"], lm[name + "r"]]
    return np.asarray(lm[name]), [lm[name]]


@pytest.mark.parametrize("au", sorted(AU_PARTS, key=int))
def test_field_is_local_and_normalised(portrait, au):
    D = au_field(au, portrait.landmarks, portrait.unit, portrait.open.shape[:2])
    mag = np.hypot(D[0], D[1])
    assert mag.max() == pytest.approx(1.0, abs=1e-5)
    ys, xs = np.nonzero(mag > 0.5)
    _, anchors = _region_center(portrait.landmarks, au)
    if len(anchors) == 2:  # bilateral: look at the image-left half and its anchor
        keep = xs < portrait.landmarks["face_center"][0]
        xs, ys, anchors = xs[keep], ys[keep], anchors[:1]
    ax, ay = anchors[0]
    d = np.hypot(xs.mean() - ax, ys.mean() - ay)
    assert d < 0.35 * portrait.unit, f"AU{au} motion centred {d:.1f} px from its landmark"
    assert (mag > 0.05).mean() < 0.12, f"AU{au} moves too much of the image"


def test_unilateral_side(portrait):
    cx = portrait.landmarks["face_center"][0]
    left = au_field("12", portrait.landmarks, portrait.unit, portrait.open.shape[:2], "L")
    mag = np.hypot(left[0], left[1])
    # the subject's left is the image right of a frontal face
    assert mag[:, int(cx) + 5 :].sum() > 50 * mag[:, : int(cx) - 5].sum()


@pytest.mark.parametrize("au", ["12", "4", "1", "9", "15", "26"])
def test_flow_is_largest_in_the_au_region(au):
    import cv2

    cfg = SynthConfig(difficulty="easy")
    p = plan_clip(cfg, "casme2", "sub01", "EP01_01", "happiness", 1, True)
    p = replace(
        p,
        aus=((au, "", 1.0, "main"),),
        amplitude_px=2.0,
        blink=None,
        drift=(0.0, 0.0, 0.0),
        gain=0.0,
        gradient=(0.0, 0.0),
    )
    por = portrait_for(p, cfg.frame_size)
    r = ClipRenderer(p, por, color=False)
    a, b = r.frame(0), r.frame(p.apex - p.onset)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(a, b, None)
    mag = np.hypot(flow[..., 0], flow[..., 1])
    # where the clip is placed in the frame: the pose moves the portrait's landmarks
    dx, dy, sc, rot = p.pose
    c = np.asarray(por.landmarks["face_center"])
    R = (
        np.array(
            [[np.cos(np.radians(rot)), -np.sin(np.radians(rot))], [np.sin(np.radians(rot)), np.cos(np.radians(rot))]]
        )
        * sc
    )

    def where(pt):
        return R @ (np.asarray(pt) - c) + c + np.array([dx, dy])

    _, anchors = _region_center(por.landmarks, au)
    w = int(0.15 * por.unit)
    inside = max(mag[int(y) - w : int(y) + w, int(x) - w : int(x) + w].mean() for x, y in map(where, anchors))
    fx, fy = where(c)
    face = mag[int(fy - por.unit) : int(fy + por.unit), int(fx - por.unit * 0.8) : int(fx + por.unit * 0.8)]
    assert inside > 3 * np.median(face), f"AU{au}: {inside:.2f} px in its region vs median {np.median(face):.2f}"
    assert inside > 0.4  # the displacement is visible to optical flow at 2 px amplitude


def test_temporal_profiles():
    p = plan_clip(SynthConfig(), "samm", "006", "006_1_2", "Anger", 0, True)
    s = expression_profile(p)
    assert s[0] == 0 and s[p.apex - p.onset] == pytest.approx(1.0) and s[-1] < 1e-6
    assert np.all(np.diff(s[: p.apex - p.onset + 1]) >= 0) and np.all(np.diff(s[p.apex - p.onset :]) <= 0)
    p = replace(p, blink=(p.onset + 2, 20, 0.9))
    b = blink_profile(p)
    assert b.max() == pytest.approx(0.9, abs=0.02) and b[0] == 0 and b[-1] == 0

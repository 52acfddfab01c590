"""Turning a :class:`~mer.synth.plan.ClipPlan` into frames.

Per frame t (onset..offset) the output pixel p samples the subject's portrait at

    q = R(t)^-1 (p - c - T(t)) + c          (head placement, drift and rotation about the face centre c)
    source = q - s(t) * D(q)                (expression: D = sum of AU fields at the apex, s in 0..1)

in one ``cv2.remap`` (bicubic), after blending the closed-eye portrait into the eye openings for a
blink (the upper lid sweeps down), then applies a smooth lighting change, sensor noise and 8-bit
quantisation. All randomness comes from the clip's seed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from mer.synth.aus import au_field
from mer.synth.config import Difficulty
from mer.synth.face import Portrait, render_portrait
from mer.synth.identity import au_style
from mer.synth.plan import ClipPlan, identity_for


def expression_profile(plan: ClipPlan) -> np.ndarray:
    """s(t) for frames onset..offset: 0 at the onset, 1 at the apex, back to ~0 at the offset.

    Returns float64 (n_frames,). Rise sin^2, fall cos^2 (smooth at both ends).
    """
    t = np.arange(plan.onset, plan.offset + 1, dtype=np.float64)
    rise = max(plan.apex - plan.onset, 1)
    fall = max(plan.offset - plan.apex, 1)
    s = np.where(
        t <= plan.apex,
        np.sin(0.5 * np.pi * (t - plan.onset) / rise) ** 2,
        np.cos(0.5 * np.pi * (t - plan.apex) / fall) ** 2,
    )
    return s


def blink_profile(plan: ClipPlan) -> np.ndarray:
    """Eye closure in 0..1 per frame onset..offset (fast closing, slower opening)."""
    n = plan.n_frames
    c = np.zeros(n)
    if plan.blink is None:
        return c
    start, length, depth = plan.blink
    close = max(1, int(round(length * 0.4)))
    for i in range(n):
        k = plan.onset + i - start
        if 0 <= k < close:
            c[i] = math.sin(0.5 * math.pi * k / close) ** 2
        elif close <= k < length:
            c[i] = math.cos(0.5 * math.pi * (k - close) / (length - close)) ** 2
    return c * depth


def expression_field(plan: ClipPlan, portrait: Portrait) -> np.ndarray:
    """D at the apex: float32 (2, H, W) pixels, sum of the clip's AU fields times their amplitudes,
    each in the subject's style (Difficulty.au_style scales how far it departs from the canonical AU)."""
    H, W = portrait.open.shape[:2]
    ident = identity_for(plan.identity_seed, plan.level)
    style_strength = Difficulty.from_level(plan.level).au_style
    D = np.zeros((2, H, W), np.float32)
    for au, side, rel, _role in plan.aus:
        style = au_style(ident, au, style_strength)
        D += (plan.amplitude_px * rel) * au_field(au, portrait.landmarks, portrait.unit, (H, W), side, style)
    return D


def _smooth_path(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smooth path from 0 to 1 over n frames with a little wobble (float64 (n,))."""
    x = np.linspace(0, 1, n)
    base = x * x * (3 - 2 * x)
    wob = 0.15 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 1.5) + rng.uniform()))
    return base + wob * np.sin(np.pi * x)


class ClipRenderer:
    """Renders the frames of one clip; ``frames()`` yields (frame number, uint8 image).

    Images are RGB (H, W, 3) when ``color`` else greyscale (H, W).
    """

    def __init__(self, plan: ClipPlan, portrait: Portrait, *, color: bool):
        self.plan, self.portrait, self.color = plan, portrait, color
        self.noise_sigma = Difficulty.from_level(plan.level).noise_sigma
        H, W = portrait.open.shape[:2]
        self.H, self.W = H, W
        self.rng = np.random.default_rng([plan.seed, 7])
        self.D = np.ascontiguousarray(expression_field(plan, portrait).transpose(1, 2, 0))  # (H, W, 2)
        self.s = expression_profile(plan)
        self.blink = blink_profile(plan)
        n = plan.n_frames
        self.path = _smooth_path(self.rng, n)
        self.light_path = _smooth_path(self.rng, n)
        self.X, self.Y = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
        self.Xn, self.Yn = (self.X - W / 2) / W, (self.Y - H / 2) / H
        self.c = portrait.landmarks["face_center"]
        base = portrait.open if color else cv2.cvtColor(portrait.open, cv2.COLOR_RGB2GRAY)
        closed = portrait.closed if color else cv2.cvtColor(portrait.closed, cv2.COLOR_RGB2GRAY)
        self.src = (base * 255.0).astype(np.float32)
        self.closed = (closed * 255.0).astype(np.float32)

    def _source(self, closure: float) -> np.ndarray:
        if closure <= 1e-3:
            return self.src
        img = self.src.copy()
        for x0, y0, x1, y1 in self.portrait.eye_boxes:
            rows = np.arange(y0, y1, dtype=np.float32)[:, None]
            lid = y0 + closure * (y1 - y0) * 1.05
            m = np.clip(lid - rows + 0.5, 0, 1) * np.ones((1, x1 - x0), np.float32)
            if self.color:
                m = m[..., None]
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - m) + self.closed[y0:y1, x0:x1] * m
        return img

    def frame(self, i: int) -> np.ndarray:
        p = self.plan
        pdx, pdy, psc, prot = p.pose
        ddx, ddy, drot = p.drift
        k = float(self.path[i])
        tx, ty = pdx + k * ddx, pdy + k * ddy
        ang = math.radians(prot + k * drot)
        cx, cy = self.c
        # inverse similarity: q = R^-1 (p - c - t) / scale + c
        ca, sa = math.cos(ang) / psc, math.sin(ang) / psc
        px, py = self.X - cx - tx, self.Y - cy - ty
        qx = ca * px + sa * py + cx
        qy = -sa * px + ca * py + cy
        s = float(self.s[i])
        if s > 1e-4:
            d = cv2.remap(self.D, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            qx = qx - s * d[..., 0]
            qy = qy - s * d[..., 1]
        img = cv2.remap(self._source(float(self.blink[i])), qx, qy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        lk = float(self.light_path[i])
        light = 1.0 + lk * (p.gain + p.gradient[0] * self.Xn + p.gradient[1] * self.Yn)
        img *= light[..., None] if self.color else light
        img += self.rng.standard_normal(img.shape, dtype=np.float32) * self.noise_sigma
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    def frames(self):
        for i in range(self.plan.n_frames):
            yield self.plan.onset + i, self.frame(i)


def portrait_for(plan: ClipPlan, size: tuple[int, int]) -> Portrait:
    """The portrait of ``plan``'s subject on a ``size`` = (width, height) canvas."""
    return render_portrait(identity_for(plan.identity_seed, plan.level), size)

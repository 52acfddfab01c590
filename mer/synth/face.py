"""Rendering one identity's portrait: a shaded face with features, hair, neck and background.

The face is drawn from a pseudo-3D height map (ellipsoid head, eye sockets, brow ridge, nose, cheeks,
chin) lit by a Lambertian light, so that it has the shading a face detector relies on (dark eye regions
and brows, a shadowed nose side, lighter forehead and cheeks). Albedo layers (skin with static texture,
brows, eyes, lips, hair, accessories) are composited with anti-aliased masks. The skin texture is fixed
to the face, so optical flow can track it when the face moves.

All images are float32 ``(H, W, 3)`` RGB in 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mer.synth.identity import Identity


@dataclass(frozen=True)
class Portrait:
    """A rendered subject: the neutral image, the same with both eyes closed, and the landmarks.

    open, closed: float32 (H, W, 3) RGB in 0..1.
    landmarks: name -> (x, y) in pixels (eye centres, brow ends, nose, mouth corners, lips, chin, cheeks).
    unit: pixels per face unit (the face half-width).
    eye_boxes: per eye (x0, y0, x1, y1) of the eye opening, for blinks.
    """

    open: np.ndarray
    closed: np.ndarray
    landmarks: dict[str, tuple[float, float]]
    unit: float
    eye_boxes: tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


def _soft(d: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - d / width, 0.0, 1.0).astype(np.float32)


def _ellipse_d(X, Y, cx, cy, ax, ay):
    """Approximate signed distance (pixels) to an axis-aligned ellipse."""
    r = np.sqrt(((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2)
    return (r - 1.0) * min(ax, ay)


def _gauss(U, V, cu, cv, su, sv):
    return np.exp(-0.5 * (((U - cu) / su) ** 2 + ((V - cv) / sv) ** 2))


def _blend(img: np.ndarray, color, alpha: np.ndarray) -> None:
    a = alpha[..., None]
    img *= 1 - a
    img += a * np.asarray(color, np.float32)


def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


def render_portrait(
    ident: Identity, size: tuple[int, int] = (320, 280), center: tuple[float, float] | None = None
) -> Portrait:
    """Render ``ident`` on a ``size`` = (width, height) canvas with the face centred at ``center``."""
    W, H = size
    rng = np.random.default_rng([ident.seed, 202])
    A = ident.face_w * min(W / 320, H / 280)
    cx, cy = center if center is not None else (W / 2, H * 0.53)
    X, Y = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    U, V = (X - cx) / A, (Y - cy) / A
    Bn = ident.aspect

    # --- background ---------------------------------------------------------------------------
    bg = np.asarray(ident.background, np.float32)
    img = np.empty((H, W, 3), np.float32)
    img[:] = bg
    img *= (1.05 - 0.15 * (Y / H))[..., None]
    if ident.bg_pattern == 1:
        edge = W * (0.12 + 0.76 * rng.random())
        img *= (1.0 - 0.18 * _soft(X - edge, 2.0))[..., None]
    elif ident.bg_pattern == 2:
        img *= (1.0 + 0.06 * _noise(rng, (H, W), 18))[..., None]
    img *= (1.0 + 0.015 * _noise(rng, (H, W), 1.5))[..., None]

    # --- shoulders, neck, hair behind the head, ears --------------------------------------------
    shirt = np.asarray(ident.shirt, np.float32)
    sh_top = cy + A * (Bn + 0.35)
    shoulders = _soft(np.maximum(sh_top - Y, np.abs(X - cx) - A * 1.6 - (Y - sh_top) * 1.2), 2.0)
    fabric = (1.0 + 0.06 * _noise(rng, (H, W), 1.0) + 0.05 * _noise(rng, (H, W), 6.0))[..., None]
    _blend(img, shirt * fabric, shoulders)
    neck = _soft(np.maximum(np.abs(X - cx) - A * 0.55, cy + A * 0.4 - Y), 2.0) * (Y < sh_top + 4)
    skin = np.asarray(ident.skin, np.float32)
    neck_tex = (1.0 + 0.035 * _noise(rng, (H, W), 0.8) + 0.04 * _noise(rng, (H, W), 3.0))[..., None]
    _blend(img, skin * 0.72 * neck_tex, neck.astype(np.float32))
    hv = ident.hair_volume
    hair_back = _soft(_ellipse_d(X, Y, cx, cy - A * 0.15, A * (1.08 + hv), A * (Bn + hv * 0.6)), 2.0)
    hair_back *= (V < 0.25 + 0.5 * hv).astype(np.float32)
    hair = np.asarray(ident.hair, np.float32)
    _blend(img, hair * 0.8, hair_back)
    for s in (-1, 1):
        ear = _soft(_ellipse_d(X, Y, cx + s * A * 0.98, cy + A * (ident.eye_y + 0.15), A * 0.13, A * 0.26), 1.5)
        _blend(img, skin * 0.8, ear)

    # --- face: height map -> Lambertian shading ---------------------------------------------------
    widen = 1.0 - ident.jaw * np.clip(V / Bn, 0, 1) ** 2
    r2 = (U / widen) ** 2 + (V / Bn) ** 2
    face_mask = _soft((np.sqrt(r2) - 1.0) * A, 1.5)
    ex, ey, ew, eh = ident.eye_dx, ident.eye_y, ident.eye_w, ident.eye_h
    nl, my = ident.nose_len, ident.mouth_y
    h = 0.75 * np.sqrt(np.clip(1.0 - r2, 0, None))
    for s in (-1, 1):
        h -= 0.13 * _gauss(U, V, s * ex, ey + 0.01, ew * 1.25, eh * 2.4)
        h += 0.05 * _gauss(U, V, s * ex, ey - ident.brow_y - 0.02, ew * 1.6, 0.06)
        h += 0.07 * _gauss(U, V, s * 0.44, my - 0.32, 0.17, 0.14)
    nose_ramp = np.clip((V - (ey - 0.05)) / (nl + 0.05), 0, 1)
    h += 0.26 * np.exp(-0.5 * (U / (0.07 + 0.05 * nose_ramp)) ** 2) * nose_ramp * (V < ey + nl + 0.06)
    h += 0.10 * _gauss(U, V, 0.0, ey + nl - 0.02, 0.09, 0.07)
    h += 0.04 * _gauss(U, V, 0.0, my, ident.mouth_w, 0.07)
    h -= 0.03 * _gauss(U, V, 0.0, my + 0.17, 0.22, 0.05)
    h += 0.05 * _gauss(U, V, 0.0, Bn * 0.86, 0.2, 0.1)
    h = cv2.GaussianBlur(h.astype(np.float32), (0, 0), 1.0)
    gy, gx = np.gradient(h * A * 0.9)  # slopes per pixel
    lx, ly = ident.light
    L = np.array([lx, ly, 1.0], np.float32)
    L /= np.linalg.norm(L)
    norm = np.sqrt(gx**2 + gy**2 + 1.0)
    lam = np.clip((-gx * L[0] - gy * L[1] + L[2]) / norm, 0, 1)
    shade = 0.32 + 0.78 * lam
    skin_tex = 1.0 + 0.035 * _noise(rng, (H, W), 0.8) + 0.04 * _noise(rng, (H, W), 3.0)
    face_alb = skin[None, None, :] * skin_tex[..., None]
    face_alb = face_alb * (1.0 + 0.06 * _gauss(U, V, 0, 0, 0.9, 1.0))[..., None]
    for s in (-1, 1):  # blush on the cheeks
        face_alb[..., 1:] *= (1 - 0.06 * _gauss(U, V, s * 0.45, my - 0.28, 0.15, 0.12))[..., None]
    if ident.stubble > 0:
        lower = np.clip((V - (my - 0.2)) * 3, 0, 1)
        speck = np.clip(_noise(rng, (H, W), 0.6), 0, None)
        face_alb *= (1 - ident.stubble * lower * (0.4 + 0.4 * speck))[..., None]

    feat = face_alb.copy()  # albedo with features; the closed-eye variant is built alongside
    # brows
    brows = np.zeros((H, W), np.float32)
    for s in (-1, 1):
        bx0 = s * (ex - ew * 1.15)
        t = np.clip((U - bx0) / (s * ew * 2.5), 0, 1)
        yb = ey - ident.brow_y - ident.brow_arch * np.sin(np.pi * np.clip(t * 1.05, 0, 1)) + 0.03 * t
        th = ident.brow_th * (1.15 - 0.55 * t)
        inside = (t > 0) & (t < 1)
        d = (np.abs(V - yb) - th / 2) * A
        brows = np.maximum(brows, _soft(d, 1.5) * inside * (0.55 + 0.4 * (1 - t)))
    brow_col = np.minimum(hair * 0.8, skin * 0.45)  # brows always darker than the skin
    _blend(feat, brow_col, np.clip(brows * (0.85 + 0.15 * _noise(rng, (H, W), 0.7)), 0, 1))
    closed = feat.copy()
    boxes = []
    for s in (-1, 1):
        ecx = s * ex
        du = (U - ecx) / ew
        upper = ey - eh * 1.15 * np.clip(1 - du**2, 0, None) ** 0.8
        lower = ey + eh * 0.85 * np.clip(1 - du**2, 0, None) ** 0.9
        opening = _soft(np.maximum(upper - V, V - lower) * A, 1.0) * (np.abs(du) < 1)
        # open eye: sclera, iris, pupil, upper lid line and lashes
        lum = float(np.mean(skin))  # sclera in proportion to the skin: keeps the eye band darker than the cheeks
        sclera = np.array([0.86, 0.84, 0.82], np.float32) * (0.55 + 0.5 * lum)
        eye = np.empty_like(feat)
        eye[:] = sclera
        iris_d = np.sqrt((U - ecx) ** 2 + (V - ey) ** 2) - eh * 1.05
        _blend(eye, ident.iris, _soft(iris_d * A, 1.0))
        _blend(eye, (0.04, 0.03, 0.03), _soft((np.sqrt((U - ecx) ** 2 + (V - ey) ** 2) - eh * 0.45) * A, 1.0))
        _blend(eye, (0.95, 0.95, 0.95), _soft((np.sqrt((U - ecx - 0.02) ** 2 + (V - ey + 0.02) ** 2) - 0.012) * A, 1.0))
        a = opening[..., None]
        feat[:] = feat * (1 - a) + eye * a
        lid = _soft((np.abs(V - upper + 0.004) - 0.012) * A, 1.2) * (np.abs(du) < 1.08)
        _blend(feat, (0.08, 0.06, 0.05), lid * 0.9)
        low = _soft((np.abs(V - lower) - 0.006) * A, 1.2) * (np.abs(du) < 1.0)
        _blend(feat, skin * 0.55, low * 0.6)
        # closed eye: lid skin over the opening and a lash line along the lower lid
        _blend(closed, skin * 0.9, np.clip(opening * 1.3, 0, 1))
        lash = _soft((np.abs(V - (lower - eh * 0.35)) - 0.012) * A, 1.2) * (np.abs(du) < 1.02)
        _blend(closed, (0.08, 0.06, 0.05), lash * 0.9)
        x0, x1 = cx + A * (ecx - ew) - 3, cx + A * (ecx + ew) + 3
        y0, y1 = cy + A * (ey - eh * 1.3) - 3, cy + A * (ey + eh * 1.0) + 3
        boxes.append((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))))
    for target in (feat, closed):
        # nostrils
        for s in (-1, 1):
            n = _soft(_ellipse_d(U, V, s * ident.nose_w * 0.7, ey + nl + 0.02, 0.045, 0.022) * A, 1.0)
            _blend(target, skin * 0.3, n * 0.85)
        # lips and mouth line
        mw, lt = ident.mouth_w, ident.lip_th
        du = U / mw
        inside = np.abs(du) < 1
        bow = np.clip(1 - du**2, 0, None)
        up_lip = _soft(np.maximum((my - lt * 1.1 * bow**0.6) - V, V - my) * A, 1.2) * inside
        lo_lip = _soft(np.maximum(my - V, V - (my + lt * 1.4 * bow**0.5)) * A, 1.2) * inside
        _blend(target, ident.lip, np.clip(up_lip + lo_lip, 0, 1) * 0.9)
        line = _soft((np.abs(V - my) - 0.008) * A, 1.2) * (np.abs(du) < 1.03)
        _blend(target, np.asarray(ident.lip) * 0.35, line * 0.9)
        if ident.mole is not None:
            m = _soft((np.sqrt((U - ident.mole[0]) ** 2 + (V - ident.mole[1]) ** 2) - 0.018) * A, 1.0)
            _blend(target, skin * 0.35, m)

    out = []
    hair_line = _soft((V - ident.hairline - 0.08 * np.cos(U * 2.2) - 0.05 * np.abs(U) ** 2) * A, 3.0)
    strands = cv2.GaussianBlur(rng.standard_normal((H, W)).astype(np.float32), (0, 0), sigmaX=0.6, sigmaY=3.0)
    hair_tex = (1.0 + 0.12 * strands / (strands.std() + 1e-6))[..., None] * hair
    for alb in (feat, closed):
        face = alb * shade[..., None]
        im = img.copy()
        a = face_mask[..., None]
        im = im * (1 - a) + face * a
        hm = np.clip(hair_line * (face_mask + hair_back), 0, 1)[..., None]
        im = im * (1 - hm) + hair_tex * hm * (0.8 + 0.3 * lam[..., None])
        if ident.glasses:
            gl = np.zeros((H, W), np.float32)
            for s in (-1, 1):
                d = np.maximum(np.abs(U - s * ex) - ew * 1.35, np.abs(V - ey) - eh * 2.6)
                gl = np.maximum(gl, _soft((np.abs(d) - 0.012) * A, 1.2))
            gl = np.maximum(gl, _soft(np.maximum(np.abs(U) - (ex - ew * 1.35), np.abs(V - ey + eh) - 0.012) * A, 1.2))
            im = im * (1 - gl[..., None]) + 0.08 * gl[..., None]
        out.append(np.clip(im, 0, 1).astype(np.float32))

    lm = {}

    def P(u, v):  # noqa: E306
        return (float(cx + A * u), float(cy + A * v))

    for side, s in (("l", -1), ("r", 1)):  # l: image left
        lm[f"eye_{side}"] = P(s * ex, ey)
        lm[f"upper_lid_{side}"] = P(s * ex, ey - eh)
        lm[f"lower_lid_{side}"] = P(s * ex, ey + eh)
        lm[f"brow_in_{side}"] = P(s * (ex - ew * 0.9), ey - ident.brow_y)
        lm[f"brow_out_{side}"] = P(s * (ex + ew * 1.1), ey - ident.brow_y + 0.02)
        lm[f"cheek_{side}"] = P(s * 0.44, my - 0.32)
        lm[f"nose_wing_{side}"] = P(s * ident.nose_w * 1.1, ey + nl - 0.02)
        lm[f"mouth_{side}"] = P(s * ident.mouth_w, my)
    lm["nose_root"] = P(0, ey - 0.02)
    lm["glabella"] = P(0, ey - ident.brow_y * 0.8)
    lm["nose_tip"] = P(0, ey + nl)
    lm["upper_lip"] = P(0, my - ident.lip_th)
    lm["lower_lip"] = P(0, my + ident.lip_th * 1.3)
    lm["chin"] = P(0, Bn * 0.85)
    lm["face_center"] = (float(cx), float(cy))
    return Portrait(open=out[0], closed=out[1], landmarks=lm, unit=float(A), eye_boxes=(boxes[0], boxes[1]))

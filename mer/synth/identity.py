"""Synthetic identities: the geometry, colours, texture and style of one subject.

An :class:`Identity` is drawn from a seed; everything about a subject (how the face looks, where its
features are, how it tends to express) is a function of that seed, so a subject renders the same in
every clip and every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# skin albedo (RGB, 0..1) anchors from light to dark; an identity mixes two neighbours
_SKIN = np.array(
    [
        [0.93, 0.80, 0.71],
        [0.88, 0.72, 0.60],
        [0.80, 0.62, 0.50],
        [0.70, 0.52, 0.40],
        [0.60, 0.43, 0.32],
        [0.50, 0.35, 0.26],
    ]
)
_HAIR = np.array(
    [
        [0.08, 0.06, 0.05],
        [0.20, 0.13, 0.08],
        [0.35, 0.24, 0.14],
        [0.12, 0.10, 0.10],
        [0.55, 0.42, 0.25],
        [0.45, 0.44, 0.43],
    ]
)


@dataclass(frozen=True)
class Identity:
    """How one synthetic subject looks and expresses.

    Lengths are in units of the face half-width (``face_w`` pixels); positions are relative to the face
    centre, x to the right, y downwards. Colours are linear RGB albedo in 0..1.
    """

    seed: int
    face_w: float  # face half-width in pixels
    aspect: float  # face half-height / half-width
    jaw: float  # 0..1 narrowing of the lower face
    eye_dx: float  # eye centre distance from the midline
    eye_y: float  # eye centre height (negative: above the face centre)
    eye_w: float  # eye half-width
    eye_h: float  # eye opening half-height
    brow_y: float  # brow height above the eye centre
    brow_th: float  # brow thickness
    brow_arch: float  # brow curvature
    nose_len: float  # nose tip height below the eye line
    nose_w: float  # nostril half-spacing
    mouth_y: float  # mouth centre height
    mouth_w: float  # mouth half-width
    lip_th: float  # lip thickness
    hairline: float  # hairline height (negative: above the centre)
    hair_volume: float  # how far hair extends beyond the face outline
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    lip: tuple[float, float, float]
    iris: tuple[float, float, float]
    shirt: tuple[float, float, float]
    background: tuple[float, float, float]
    bg_pattern: int  # 0 plain gradient, 1 vertical panel edge, 2 blotches
    glasses: bool
    mole: tuple[float, float] | None
    stubble: float  # 0..1 darkening of the lower face
    light: tuple[float, float]  # light direction (x, y) on the unit hemisphere
    # expression style (per-subject idiosyncrasies)
    amp_scale: float  # multiplier of every AU amplitude
    asym: float  # -1..1: left/right imbalance of bilateral AUs
    habit_au: str  # an AU this subject shows a little in every clip ('' for none)
    habit_amp: float  # its relative amplitude
    proto_pref: int  # seed of the subject's preference over AU prototypes
    blink_rate: float  # probability of a blink in a clip, before the difficulty's scaling
    speed: float  # multiplier of the onset->apex duration
    au_style: int  # seed of the subject's way of producing each AU (direction, place, spread)


def _pick(rng: np.random.Generator, table: np.ndarray) -> tuple[float, float, float]:
    i = rng.uniform(0, len(table) - 1)
    lo = int(i)
    c = table[lo] * (1 - (i - lo)) + table[min(lo + 1, len(table) - 1)] * (i - lo)
    c = c * rng.uniform(0.95, 1.05, 3)
    return tuple(float(x) for x in np.clip(c, 0, 1))


HABIT_AUS = ("4", "14", "7", "17", "1", "6")


def make_identity(seed: int, *, style_spread: float = 0.3, habit_prob: float = 0.5) -> Identity:
    """Draw an identity from ``seed``.

    style_spread: log-normal sigma of the subject's amplitude multiplier (larger: subjects differ more).
    habit_prob: probability that the subject has a habitual AU shown in every clip.
    """
    rng = np.random.default_rng([seed, 101])
    skin = _pick(rng, _SKIN)
    lip = tuple(float(x) for x in np.clip(np.array(skin) * np.array([0.92, 0.62, 0.62]) * rng.uniform(0.9, 1.05), 0, 1))
    habit = str(rng.choice(HABIT_AUS)) if rng.random() < habit_prob else ""
    bgc = rng.uniform(0.35, 0.85) * np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.12, 0.12, 3)
    return Identity(
        seed=seed,
        face_w=float(rng.uniform(76, 86)),
        aspect=float(rng.uniform(1.18, 1.32)),
        jaw=float(rng.uniform(0.15, 0.35)),
        eye_dx=float(rng.uniform(0.36, 0.42)),
        eye_y=float(rng.uniform(-0.22, -0.12)),
        eye_w=float(rng.uniform(0.15, 0.19)),
        eye_h=float(rng.uniform(0.055, 0.075)),
        brow_y=float(rng.uniform(0.17, 0.24)),
        brow_th=float(rng.uniform(0.045, 0.075)),
        brow_arch=float(rng.uniform(0.03, 0.09)),
        nose_len=float(rng.uniform(0.42, 0.52)),
        nose_w=float(rng.uniform(0.09, 0.13)),
        mouth_y=float(rng.uniform(0.56, 0.66)),
        mouth_w=float(rng.uniform(0.24, 0.31)),
        lip_th=float(rng.uniform(0.045, 0.07)),
        hairline=float(rng.uniform(-0.95, -0.7)),
        hair_volume=float(rng.uniform(0.05, 0.3)),
        skin=skin,
        hair=_pick(rng, _HAIR),
        lip=lip,  # type: ignore[arg-type]
        iris=tuple(float(x) for x in rng.uniform([0.1, 0.07, 0.04], [0.35, 0.3, 0.25])),  # type: ignore
        shirt=tuple(float(x) for x in rng.uniform(0.05, 0.9, 3)),  # type: ignore[arg-type]
        background=tuple(float(x) for x in np.clip(bgc, 0, 1)),  # type: ignore[arg-type]
        bg_pattern=int(rng.integers(0, 3)),
        glasses=bool(rng.random() < 0.15),
        mole=(float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.2, 0.8))) if rng.random() < 0.3 else None,
        stubble=float(rng.uniform(0.0, 0.25)) if rng.random() < 0.25 else 0.0,
        light=(float(rng.uniform(-0.45, 0.45)), float(rng.uniform(-0.5, -0.1))),
        amp_scale=float(np.exp(rng.normal(0.0, style_spread))),
        asym=float(rng.uniform(-0.5, 0.5)),
        habit_au=habit,
        habit_amp=float(rng.uniform(0.2, 0.45)),
        proto_pref=int(rng.integers(0, 2**31 - 1)),
        blink_rate=float(rng.uniform(0.1, 0.5)),
        speed=float(np.exp(rng.normal(0.0, 0.2))),
        au_style=int(rng.integers(0, 2**31 - 1)),
    )


def au_style(ident: Identity, au: str, strength: float) -> tuple[float, float, float, float]:
    """The subject's style for ``au`` scaled by ``strength`` (0: canonical FACS motion; 1: about 30
    degrees of direction change, 0.05 face units of displacement of the anchors, 20% spread change).
    Returns (rotation radians, du, dv, spread multiplier)."""
    rng = np.random.default_rng([ident.au_style, int(au)])
    rot, du, dv, sp = rng.normal(0, 1, 4)
    return (
        float(np.radians(30.0) * strength * rot),
        float(0.05 * strength * du),
        float(0.05 * strength * dv),
        float(np.exp(0.2 * strength * sp)),
    )

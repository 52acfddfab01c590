"""The generation plan: every clip's subject, name, emotion, AUs, timing and nuisances, without pixels.

The plan is a pure function of the :class:`~mer.synth.config.SynthConfig`; each clip draws from its own
random stream (seeded by the root seed and the clip's name), so nothing depends on iteration order or
on how rendering is split across workers. Annotations, the sample list and the ground-truth sidecar are
written from the plan; the renderer only turns it into frames.
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from mer.synth.aus import DISTRACTORS, PROTOTYPES, UNILATERAL_OK, au_string
from mer.synth.config import Difficulty, SynthConfig
from mer.synth.identity import Identity, make_identity

FPS = {"casme2": 200, "samm": 200, "smic": 100}
DATASETS = ("casme2", "samm", "smic")
LIST_PATH = Path(__file__).resolve().parent.parent / "data" / "lists" / "megc2019_composite.csv"

# 3-class label -> native emotions with their shares (close to the real datasets' proportions)
NATIVE = {
    "casme2": {
        0: (("disgust", 0.6), ("repression", 0.28), ("fear", 0.04), ("sadness", 0.08)),
        1: (("happiness", 1.0),),
        2: (("surprise", 1.0),),
    },
    "samm": {
        0: (("Anger", 0.62), ("Contempt", 0.13), ("Disgust", 0.1), ("Fear", 0.09), ("Sadness", 0.06)),
        1: (("Happiness", 1.0),),
        2: (("Surprise", 1.0),),
    },
    "smic": {0: (("negative", 1.0),), 1: (("positive", 1.0),), 2: (("surprise", 1.0),)},
}
OTHERS = {"casme2": "others", "samm": "Other"}
SMIC_FOLDER = {"ne": "negative", "po": "positive", "sur": "surprise"}
MISMATCH_SOURCES = {"happiness": 1, "surprise": 2, "disgust": 0, "repression": 0, "anger": 0, "sadness": 0, "fear": 0}
SMIC_NEG_SOURCES = (("disgust", 0.4), ("anger", 0.2), ("sadness", 0.15), ("repression", 0.25))


@dataclass(frozen=True)
class ClipPlan:
    """One clip. Frame numbers are those in the file names; ``apex`` is the true apex.

    aus: (AU, side '' | 'L' | 'R', relative amplitude, role 'main' | 'distractor' | 'habit').
    amplitude_px: apex displacement (pixels) of the strongest point of an AU with relative amplitude 1.
    apex_noted: the apex written in the annotation (the true apex plus the annotator's error).
    apex_annotated: False when the annotation shows no apex ('/' in CASME II, -1 in SAMM, all SMIC).
    blink: (first frame, length in frames, depth 0..1) or None.
    pose: (dx, dy, scale, rotation in degrees) of the clip's head placement relative to the portrait.
    drift: (dx, dy, rotation in degrees) reached between onset and offset; gain, gradient: lighting change.
    """

    dataset: str
    subject: str
    clip: str
    native_subject: str
    native_clip: str
    emotion: str
    label: int | None
    in_list: bool
    onset: int
    apex: int
    offset: int
    apex_noted: int
    apex_annotated: bool
    aus: tuple[tuple[str, str, float, str], ...]
    amplitude_px: float
    blink: tuple[int, int, float] | None
    pose: tuple[float, float, float, float]
    drift: tuple[float, float, float]
    gain: float
    gradient: tuple[float, float]
    seed: int
    identity_seed: int
    level: float  # the difficulty in [0, 1] the clip was planned at
    au_emotion: str  # the emotion whose AU prototypes the clip shows (differs from ``emotion``
    # for the share of mismatched clips, see Difficulty.mismatch)

    @property
    def fps(self) -> int:
        return FPS[self.dataset]

    @property
    def n_frames(self) -> int:
        return self.offset - self.onset + 1

    @property
    def au_code(self) -> str:
        return au_string([(a, s) for a, s, _, _ in self.aus])


def stable_seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def identity_seed(cfg: SynthConfig, dataset: str, subject: str) -> int:
    return stable_seed(cfg.seed, "identity", dataset, subject)


@lru_cache(maxsize=512)
def identity_for(seed: int, d: float) -> Identity:
    lvl = Difficulty.from_level(d)
    return make_identity(seed, style_spread=lvl.style_spread, habit_prob=lvl.habit_prob)


def read_list(path: Path = LIST_PATH) -> list[tuple[str, str, str, int]]:
    with open(path, newline="") as f:
        return [(r["dataset"], r["subject"], r["clip"], int(r["label"])) for r in csv.DictReader(f)]


def native_subject(dataset: str, subject: str) -> str:
    """Folder spelling of a subject: SMIC 's01' -> 's1'; others unchanged."""
    return f"s{int(subject[1:])}" if dataset == "smic" else subject


def native_clip(dataset: str, clip: str) -> str:
    if dataset == "smic":  # s01_ne_01 -> s1_ne_01
        subj, rest = clip.split("_", 1)
        return f"s{int(subj[1:])}_{rest}"
    return clip


def _choice(rng: np.random.Generator, pairs) -> str:
    names = [p[0] for p in pairs]
    w = np.array([p[1] for p in pairs], float)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _aus(rng, ident: Identity, lvl: Difficulty, emotion: str, label: int | None):
    protos = PROTOTYPES[emotion.lower() if emotion.lower() in PROTOTYPES else "others"]
    pref = np.random.default_rng([ident.proto_pref, stable_seed(emotion.lower())])
    weights = pref.dirichlet([lvl.proto_concentration] * len(protos))
    proto = protos[int(rng.choice(len(protos), p=weights))]
    out: list[tuple[str, str, float, str]] = []
    uni_p = 0.8 if emotion.lower() == "contempt" else 0.2
    for i, au in enumerate(proto):
        side = ""
        if au in UNILATERAL_OK and rng.random() < uni_p:
            side = "L" if rng.random() < 0.5 + 0.4 * ident.asym else "R"
        out.append((au, side, 1.0 if i == 0 else round(float(rng.uniform(0.65, 1.0)), 4), "main"))
    have = {a for a, *_ in out}
    cls = label if label is not None else int(rng.integers(0, 3))
    if rng.random() < lvl.distractor_prob:
        cand = [a for a in DISTRACTORS[cls] if a not in have]
        if cand:
            au = str(rng.choice(cand))
            out.append((au, "", round(float(lvl.distractor_amp * rng.uniform(0.6, 1.2)), 4), "distractor"))
            have.add(au)
    if ident.habit_au and ident.habit_au not in have:
        out.append((ident.habit_au, "", round(float(lvl.habit_amp * rng.uniform(0.7, 1.1)), 4), "habit"))
    return tuple(out)


def plan_clip(
    cfg: SynthConfig,
    dataset: str,
    subject: str,
    clip: str,
    emotion: str,
    label: int | None,
    in_list: bool,
    *,
    apex_annotated: bool = True,
) -> ClipPlan:
    """Draw one clip's expression, timing and nuisances from its own random stream."""
    lvl = cfg.level
    seed = stable_seed(cfg.seed, "clip", dataset, subject, clip)
    rng = np.random.default_rng(seed)
    iseed = identity_seed(cfg, dataset, subject)
    ident = identity_for(iseed, lvl.d)
    fps = FPS[dataset]
    scale = cfg.durations
    rise = max(3, int(round(rng.uniform(60, 150) * ident.speed * fps / 1000 * scale)))
    fall = max(4, int(round(rng.uniform(100, 210) * fps / 1000 * scale)))
    onset = {
        "casme2": int(rng.integers(10, 220)),
        "samm": int(rng.integers(500, 9000)),
        "smic": int(rng.integers(1000, 300000)),
    }[dataset]
    apex, offset = onset + rise, onset + rise + fall
    if not apex_annotated and dataset != "smic":
        apex = onset + (offset - onset) // 2  # the loaders' convention is then exactly right
    jitter = int(round(rng.normal(0, lvl.apex_jitter) * rise))
    apex_noted = int(np.clip(apex + jitter, onset + 1, offset - 1)) if apex_annotated else apex
    amp = lvl.amplitude_px * ident.amp_scale * float(np.exp(rng.normal(0, lvl.amplitude_spread)))
    au_emotion = emotion
    if label is not None and rng.random() < lvl.mismatch:  # the face does not show the labelled emotion
        au_emotion = str(rng.choice([e for e in MISMATCH_SOURCES if MISMATCH_SOURCES[e] != label]))
    aus = _aus(rng, ident, lvl, au_emotion, label)
    blink = None
    n = offset - onset + 1
    if rng.random() < min(0.95, lvl.blink_prob * ident.blink_rate / 0.3):
        length = max(3, int(round(rng.uniform(100, 180) * fps / 1000 * scale)))
        if rng.random() < 0.5:  # blinks often come with the expression: eyes partly shut at the apex
            start = apex - int(round(length * rng.uniform(0.15, 0.7)))
        else:
            start = onset + int(rng.integers(-length // 2, n - length // 2))
        blink = (start, length, round(float(rng.uniform(0.6, 1.0)), 4))
    ang = rng.uniform(0, 2 * np.pi)
    dmag = lvl.drift_px * rng.uniform(0.3, 1.0)
    pose = (
        round(float(rng.uniform(-8, 8)), 3),
        round(float(rng.uniform(-6, 6)), 3),
        round(float(rng.uniform(0.96, 1.04)), 4),
        round(float(rng.uniform(-3, 3)), 3),
    )
    drift = (
        round(float(dmag * np.cos(ang)), 4),
        round(float(dmag * np.sin(ang)), 4),
        round(float(lvl.rotation_deg * rng.uniform(-1, 1)), 4),
    )
    gain = round(float(lvl.illumination * rng.uniform(-1, 1)), 5)
    gradient = (
        round(float(lvl.illumination * rng.uniform(-1, 1)), 5),
        round(float(lvl.illumination * rng.uniform(-1, 1)), 5),
    )
    return ClipPlan(
        dataset=dataset,
        subject=subject,
        clip=clip,
        native_subject=native_subject(dataset, subject),
        native_clip=native_clip(dataset, clip),
        emotion=emotion,
        label=label,
        in_list=in_list,
        onset=onset,
        apex=apex,
        offset=offset,
        apex_noted=apex_noted,
        apex_annotated=apex_annotated and dataset != "smic",
        aus=aus,
        amplitude_px=round(amp, 4),
        blink=blink,
        pose=pose,
        drift=drift,
        gain=gain,
        gradient=gradient,
        seed=seed,
        identity_seed=iseed,
        level=lvl.d,
        au_emotion=au_emotion,
    )


def _native_emotion(cfg: SynthConfig, dataset: str, subject: str, clip: str, label: int) -> str:
    rng = np.random.default_rng(stable_seed(cfg.seed, "emotion", dataset, subject, clip))
    if dataset == "smic":
        return SMIC_FOLDER[clip.split("_")[1]]
    return _choice(rng, NATIVE[dataset][label])


def _expression_emotion(cfg, p_dataset, subject, clip, emotion) -> str:
    """SMIC's folder labels are coarse: a negative clip shows the AUs of a specific negative emotion."""
    if p_dataset == "smic" and emotion == "negative":
        rng = np.random.default_rng(stable_seed(cfg.seed, "smic-neg", subject, clip))
        return _choice(rng, SMIC_NEG_SOURCES)
    return emotion


def _extra_names(dataset: str, subject: str, taken: set[str], rng) -> str:
    for _ in range(1000):
        if dataset == "casme2":
            name = f"EP{int(rng.integers(1, 20)):02d}_{int(rng.integers(1, 12)):02d}"
        else:
            name = f"{subject}_{int(rng.integers(1, 8))}_{int(rng.integers(1, 12))}"
        if name not in taken:
            taken.add(name)
            return name
    raise RuntimeError(f"no free clip name for {dataset} {subject}")


def _plans_from_rows(
    cfg: SynthConfig, rows, extras: dict[str, list[str]], n_excluded: int, no_apex: dict[str, int]
) -> list[ClipPlan]:
    """rows: (dataset, subject, clip, label) of the sample list; extras: dataset -> subjects that get
    one 'others' clip each (a subject may repeat); n_excluded: CASME II disgust clips left out of the
    list (as in the real composite); no_apex: dataset -> number of rows written without an apex."""
    rng = np.random.default_rng(stable_seed(cfg.seed, "structure"))
    taken: dict[tuple[str, str], set[str]] = {}
    for ds, subj, clip, _ in rows:
        taken.setdefault((ds, subj), set()).add(clip)
    specs = []  # (dataset, subject, clip, native emotion, label, in_list)
    for ds, subj, clip, label in rows:
        specs.append((ds, subj, clip, _native_emotion(cfg, ds, subj, clip, label), label, True))
    for ds, subjects in extras.items():
        for subj in subjects:
            name = _extra_names(ds, subj, taken.setdefault((ds, subj), set()), rng)
            specs.append((ds, subj, name, OTHERS[ds], None, False))
    c2_subjects = sorted({s for d, s, *_ in rows if d == "casme2"})
    for _ in range(n_excluded):
        subj = c2_subjects[int(rng.integers(len(c2_subjects)))]
        specs.append(
            ("casme2", subj, _extra_names("casme2", subj, taken[("casme2", subj)], rng), "disgust", None, False)
        )
    missing: set[tuple[str, str, str]] = set()
    for ds, k in no_apex.items():
        cand = [s for s in specs if s[0] == ds]
        for i in sorted(rng.choice(len(cand), size=min(k, len(cand)), replace=False)):
            missing.add(cand[int(i)][:3])
    plans = []
    for ds, subj, clip, emo, label, in_list in specs:
        p = plan_clip(
            cfg,
            ds,
            subj,
            clip,
            _expression_emotion(cfg, ds, subj, clip, emo),
            label,
            in_list,
            apex_annotated=(ds, subj, clip) not in missing,
        )
        plans.append(replace(p, emotion=emo))
    return plans


def tiny_rows() -> list[tuple[str, str, str, int]]:
    rows = []
    for subj, eps in (("sub01", ("EP01_01", "EP02_01f", "EP03_02")), ("sub02", ("EP01_11f", "EP05_02", "EP09_01"))):
        rows += [("casme2", subj, ep, lab) for ep, lab in zip(eps, (0, 1, 2), strict=True)]
    for subj in ("006", "007"):
        rows += [("samm", subj, f"{subj}_1_{i + 1}", lab) for i, lab in enumerate((0, 1, 2))]
    for subj in ("s01", "s02"):
        rows += [("smic", subj, f"{subj}_{t}_01", lab) for t, lab in (("ne", 0), ("po", 1), ("sur", 2))]
    return rows


def make_plan(cfg: SynthConfig) -> list[ClipPlan]:
    """All clips of ``cfg``'s preset: the sample list's rows in its order, then the clips outside it."""
    if cfg.preset == "tiny":
        return _plans_from_rows(cfg, tiny_rows(), {"casme2": ["sub01"], "samm": ["007"]}, 0, {"casme2": 1, "samm": 1})
    rows = read_list()
    rng = np.random.default_rng(stable_seed(cfg.seed, "others"))
    c2 = sorted({s for d, s, *_ in rows if d == "casme2"})
    sm = sorted({s for d, s, *_ in rows if d == "samm"})
    extras = {
        # the real CASME II has 26 subjects: sub10 and sub18 have no clip in the composite
        "casme2": sorted([str(s) for s in rng.choice(c2, 10, replace=False)] + ["sub10"] * 2 + ["sub18"] * 2),
        "samm": sorted(str(s) for s in rng.choice(sm, 10, replace=False)),
    }
    return _plans_from_rows(cfg, rows, extras, n_excluded=2, no_apex={"casme2": 8, "samm": 3})


def list_rows(plans: list[ClipPlan]) -> list[tuple[str, str, str, int]]:
    """The composite sample list (dataset, subject, clip, label) in the shipped list's order."""
    return [(p.dataset, p.subject, p.clip, int(p.label)) for p in plans if p.in_list and p.label is not None]

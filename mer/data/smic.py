"""SMIC-HS: ``HS/s1/micro/{negative,positive,surprise}/s1_ne_01/image046110.bmp`` (optional ``reg_``
crops in the same folders, or a separate ``SMIC_all_cropped/HS`` tree). No spreadsheet: the label is the
folder name, a clip runs from its first to its last frame, and there is no apex (rule: a parameter,
default the middle frame ``onset + (offset - onset) // 2``)."""

from __future__ import annotations

import re
from pathlib import Path

from mer.data.discovered import Discovered
from mer.data.frames import Entry, middle_apex, scan_frames
from mer.data.layout import find_base
from mer.data.problems import DatasetError

BASE_DIRS = [
    "HS",
    "SMIC_all_cropped/HS",
    "SMIC_all_raw/HS",
    "SMIC/HS",
    "SMIC/SMIC_all_cropped/HS",
    "SMIC/SMIC_all_raw/HS",
    "",
]
SUBJECT_RX = r"s\d+"


def norm_subject(name: str) -> str | None:
    m = re.fullmatch(r"s0*(\d+)", name, re.IGNORECASE)
    return f"s{int(m.group(1)):02d}" if m else None


def norm_clip(name: str) -> str | None:
    """``s1_ne_01`` -> ``s01_ne_01`` (the protocol spelling)."""
    m = re.fullmatch(r"s0*(\d+)_(.+)", name, re.IGNORECASE)
    return f"s{int(m.group(1)):02d}_{m.group(2)}" if m else None


def apex_rule_from(smic_apex) -> callable:
    """'middle' or a callable (onset, offset) -> apex frame number."""
    if smic_apex == "middle" or smic_apex is None:
        return middle_apex
    if callable(smic_apex):
        return smic_apex
    raise ValueError(f"smic_apex must be 'middle' or a callable (onset, offset) -> frame, got {smic_apex!r}")


def _clips(base: Path):
    for sdir in sorted(p for p in base.iterdir() if p.is_dir() and re.fullmatch(SUBJECT_RX, p.name)):
        micro = sdir / "micro"
        if not micro.is_dir():
            continue
        for edir in sorted(p for p in micro.iterdir() if p.is_dir()):
            for cdir in sorted(p for p in edir.iterdir() if p.is_dir()):
                yield sdir, edir, cdir


def discover(root: Path, *, frames="auto", problems, smic_apex="middle", **_) -> Discovered:
    if frames not in ("auto", "raw", "cropped"):
        raise ValueError(f"frames must be 'auto', 'raw' or 'cropped', got {frames!r}")
    bases = []
    for c in BASE_DIRS:
        b = find_base(root, [c], SUBJECT_RX)
        if b is not None and b not in bases and any(True for _ in _clips(b)):
            bases.append(b)
    if not bases:
        raise DatasetError(
            f"smic: no clip folders found under {root} (looked for "
            "HS/s1/micro/<negative|positive|surprise>/s1_ne_01/). Point root at the folder "
            "holding HS/."
        )

    def has_crops(b):
        return any(scan_frames(c, True) for _, _, c in _clips(b))

    if frames == "raw":
        pick = [(b, False) for b in bases if any(scan_frames(c, False) for _, _, c in _clips(b))]
    elif frames == "cropped":
        pick = [(b, True) for b in bases if has_crops(b)]
        if not pick:
            raise DatasetError(f"smic: frames='cropped' but no reg_* crops under {root}; use frames='raw' or 'auto'")
    else:
        pick = [(b, True) for b in bases if has_crops(b)] or [(b, False) for b in bases]
    if not pick:
        raise DatasetError(f"smic: no raw frames under {root}")
    base, cropped = pick[0]
    entries, index = [], {}
    for sdir, edir, cdir in _clips(base):
        subj, clip = norm_subject(sdir.name), norm_clip(cdir.name)
        src = f"folder {cdir.relative_to(base)}"
        if clip is None:
            problems.add(
                f"smic {sdir.name}/{cdir.name} ({src})",
                "clip folder name not of the form s<N>_<code>_<NN>",
                "bad-clip-name",
            )
            continue
        idx = scan_frames(cdir, cropped)
        e = Entry(
            subject=subj,
            clip=clip,
            native_clip=cdir.name,
            onset=min(idx) if idx else 0,
            apex=None,
            offset=max(idx) if idx else 0,
            aus="",
            emotion=edir.name,
            source=src,
        )
        index[id(e)] = (cdir, idx)
        entries.append(e)
    return Discovered(
        entries,
        lambda e: index[id(e)][0],
        cropped,
        frames_index=lambda e: index[id(e)][1],
        apex_rule=apex_rule_from(smic_apex),
    )

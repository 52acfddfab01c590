"""CAS(ME)^3 Part A: ``spNO.1/a/color/175.jpg`` (frames sometimes dropped); annotation
``cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx`` (or the shipped ``casme3_partA.csv``). Several
micro-expressions share one Filename, so the clip id is ``<Filename>_<onset>`` (e.g. ``a_175``)."""

from __future__ import annotations

import re
from pathlib import Path

from mer.data.annotations import cell_text, find_annotation, read_rows, rows_to_entries
from mer.data.discovered import Discovered
from mer.data.layout import choose_frames, find_base

RAW_DIRS = ["", "part_A", "Part_A", "part_A/data/part_A", "data/part_A", "CAS(ME)3/part_A", "data"]
SUBJECT_RX = r"spNO\.\d+"
ANNOTATION_RX = r"^cas[\W_]*me[\W_]*\^?3.*part[\W_]*a.*\.(xlsx|xls)$"


def norm_subject(value) -> str | None:
    s = cell_text(value)
    m = re.fullmatch(r"(?:spNO\.?)?0*(\d+)", s, re.IGNORECASE)
    return f"spNO.{int(m.group(1))}" if m else None


def clip_id(filename: str, onset: int | None) -> str:
    return f"{filename}_{onset}"


def discover(root: Path, *, annotation=None, frames="auto", problems, **_) -> Discovered:
    path = (
        Path(annotation)
        if annotation
        else find_annotation(root, ANNOTATION_RX, "CAS(ME)^3 Part A", "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx")
    )
    entries = rows_to_entries("casme3", read_rows(path), path, norm_subject, problems, clip_name=clip_id)
    base, cropped = choose_frames(
        "casme3",
        frames,
        root,
        find_base(root, RAW_DIRS, SUBJECT_RX),
        None,
        raw_hint="spNO.1/a/color/",
        crop_hint="(CAS(ME)^3 ships no face crops)",
    )

    def clip_dir(e) -> Path:
        d = base / e.subject / e.native_clip
        return d / "color" if (d / "color").is_dir() or not d.is_dir() else d

    return Discovered(entries, clip_dir, cropped, tolerate_gaps=True)

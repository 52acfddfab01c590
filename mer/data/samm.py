"""SAMM: ``SAMM/006/006_1_2/006_05562.jpg`` (or subject folders directly under the root); annotation
``SAMM_Micro_FACS_Codes*.xlsx`` with note rows above the header; some apexes missing (blank or -1)."""

from __future__ import annotations

from pathlib import Path

from mer.data.annotations import find_annotation, int_subject, read_rows, rows_to_entries
from mer.data.discovered import Discovered
from mer.data.layout import choose_frames, find_base

RAW_DIRS = ["SAMM", "SAMM/SAMM", ""]
SUBJECT_RX = r"\d{1,3}"
ANNOTATION_RX = r"^SAMM_Micro_FACS_Codes.*\.(xlsx|xls|csv)$"


def norm_subject(value) -> str | None:
    return int_subject(value, "{:03d}")


def discover(root: Path, *, annotation=None, frames="auto", problems, **_) -> Discovered:
    path = (
        Path(annotation) if annotation else find_annotation(root, ANNOTATION_RX, "SAMM", "SAMM_Micro_FACS_Codes*.xlsx")
    )
    entries = rows_to_entries("samm", read_rows(path), path, norm_subject, problems)
    base, cropped = choose_frames(
        "samm",
        frames,
        root,
        find_base(root, RAW_DIRS, SUBJECT_RX),
        None,
        raw_hint="SAMM/006/006_1_2/",
        crop_hint="(SAMM ships no face crops)",
    )

    def clip_dir(e) -> Path:
        for s in (e.subject, str(int(e.subject))):  # '006' or '6' on disk
            if (base / s).is_dir():
                return base / s / e.native_clip
        return base / e.subject / e.native_clip

    return Discovered(entries, clip_dir, cropped)

"""CASME II: ``CASME2_RAW_selected/sub01/EP02_01f/img46.jpg`` or ``Cropped/sub01/EP02_01f/reg_img46.jpg``;
annotation ``CASME2-coding-*.xlsx`` (Subject as an int, blank-headed columns, '/' apexes)."""

from __future__ import annotations

from pathlib import Path

from mer.data.annotations import find_annotation, int_subject, read_rows, rows_to_entries
from mer.data.discovered import Discovered
from mer.data.layout import choose_frames, find_base, find_crop_base

RAW_DIRS = ["CASME2_RAW_selected", "CASME2_RAW_selected/CASME2_RAW_selected", "CASME2_RAW", "RAW_selected", ""]
CROP_DIRS = ["Cropped", "CASME2_Cropped/Cropped", "CASME2_Cropped", "Cropped/Cropped", ""]
SUBJECT_RX = r"sub\d+"
ANNOTATION_RX = r"^CASME2[-_ ]?coding.*\.(xlsx|xls|csv)$"


def norm_subject(value) -> str | None:
    return int_subject(value, "sub{:02d}", r"(?:sub)?")


def discover(root: Path, *, annotation=None, frames="auto", problems, **_) -> Discovered:
    path = Path(annotation) if annotation else find_annotation(root, ANNOTATION_RX, "CASME II", "CASME2-coding-*.xlsx")
    entries = rows_to_entries("casme2", read_rows(path), path, norm_subject, problems)
    base, cropped = choose_frames(
        "casme2",
        frames,
        root,
        find_base(root, RAW_DIRS, SUBJECT_RX),
        find_crop_base(root, CROP_DIRS, SUBJECT_RX),
        raw_hint="CASME2_RAW_selected/subNN/",
        crop_hint="Cropped/subNN/ with reg_*.jpg",
    )
    return Discovered(entries, lambda e: base / e.subject / e.native_clip, cropped)

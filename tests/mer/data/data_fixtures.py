"""Tiny native-layout dataset trees (a few 8x8 frames per clip) for the loader tests.

A uniquely named module (not conftest) so that `from data_fixtures import ...` cannot pick up another
folder's conftest."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openpyxl


def write_xlsx(path: Path, rows: list[list]) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


def write_frames(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = np.full((8, 8, 3), 128, np.uint8)
    for n in names:
        cv2.imwrite(str(folder / n), img)


CASME2_HEADER = [
    "Subject",
    "Filename",
    None,
    "OnsetFrame",
    "ApexFrame",
    "OffsetFrame",
    None,
    "Action Units",
    "Estimated Emotion",
]


def make_casme2(root: Path, clips, *, raw=True, cropped=False, skip_frames=()) -> Path:
    """clips: (subject int, filename, onset, apex (int or '/'), offset, emotion)."""
    rows = [CASME2_HEADER]
    for subj, fname, on, ap, off, emo in clips:
        rows.append([subj, fname, "x", on, ap, off, "", "4+7", emo])
        first = on if isinstance(on, int) else 1
        nums = [n for n in range(first, off + 1) if (subj, fname, n) not in skip_frames]
        if raw:
            write_frames(root / "CASME2_RAW_selected" / f"sub{subj:02d}" / fname, [f"img{n}.jpg" for n in nums])
        if cropped:
            write_frames(root / "Cropped" / f"sub{subj:02d}" / fname, [f"reg_img{n}.jpg" for n in nums])
    write_xlsx(root / "CASME2-coding-20140508.xlsx", rows)
    return root


SAMM_HEADER = [
    "Subject",
    "Filename",
    "Inducement Code",
    "Onset Frame",
    "Apex Frame",
    "Offset Frame",
    "Duration",
    "Type",
    "Action Units",
    "Estimated Emotion",
    "Objective Classes",
    "Notes",
]


def make_samm(root: Path, clips, *, nested=True, notes=13) -> Path:
    """clips: (subject int, filename, onset, apex (int/None/-1), offset, emotion)."""
    rows = [[f"SAMM note line {i}"] + [None] * 11 for i in range(notes)]
    rows.append(SAMM_HEADER)
    base = root / "SAMM" if nested else root
    for subj, fname, on, ap, off, emo in clips:
        rows.append(
            [f"{subj:03d}" if subj % 2 else subj, fname, 1, on, ap, off, off - on + 1, "Micro", "R12", emo, 1, ""]
        )
        write_frames(base / f"{subj:03d}" / fname, [f"{subj:03d}_{n:05d}.jpg" for n in range(on, off + 1)])
    write_xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", rows)
    return root


def make_smic(root: Path, clips, *, crops=False) -> Path:
    """clips: (subject int, emotion folder, index, first frame, n frames)."""
    code = {"negative": "ne", "positive": "po", "surprise": "sur"}
    for subj, emo, idx, first, n in clips:
        d = root / "HS" / f"s{subj}" / "micro" / emo / f"s{subj}_{code.get(emo, 'xx')}_{idx:02d}"
        names = [f"image{k:06d}.bmp" for k in range(first, first + n)]
        write_frames(d, names + ([f"reg_{x}" for x in names] if crops else []))
    return root


def make_casme3(root: Path, clips, *, drop=()) -> Path:
    """clips: (subject int, filename, onset, apex, offset, emotion); drop: frame numbers not written."""
    rows = [["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]]
    for subj, fname, on, ap, off, emo in clips:
        rows.append([f"spNO.{subj}", fname, on, ap, off, "4", "III", emo])
        write_frames(root / f"spNO.{subj}" / fname / "color", [f"{n}.jpg" for n in range(on, off + 1) if n not in drop])
    write_xlsx(root / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", rows)
    return root

"""Tiny CASME II trees (dataset crops: no face detection) for the fault-injection tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import openpyxl
from test_prep_flow import shifted_texture

HEADER = [
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
EMOTIONS = ["happiness", "surprise", "repression", "disgust"]


def make_casme2_crops(root: Path, n: int = 4, size: int = 72, frames: int = 3) -> Path:
    """n subjects with one clip EP01_01 each: frames 1..frames, apex 2; crops reg_img<k>.jpg."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(HEADER)
    for subj in range(1, n + 1):
        ws.append([subj, "EP01_01", "", 1, 2, frames, "", "12", EMOTIONS[subj % len(EMOTIONS)]])
        a, b = shifted_texture(size, dx=0.5, dy=0.0, seed=subj)
        d = root / "Cropped" / f"sub{subj:02d}" / "EP01_01"
        d.mkdir(parents=True)
        for k in range(1, frames + 1):
            cv2.imwrite(str(d / f"reg_img{k}.jpg"), a if k == 1 else b)
    wb.save(root / "CASME2-coding-20190701.xlsx")
    return root


def frame(root: Path, subj: int, k: int) -> Path:
    return root / "Cropped" / f"sub{subj:02d}" / "EP01_01" / f"reg_img{k}.jpg"


def make_samm_row(root: Path, subj: int, clip: str, onset: int, apex: int, offset: int, size: int = 64) -> Path:
    """A one-clip SAMM tree (note rows above the header, 5-digit frame numbers), frames onset..offset."""
    wb = openpyxl.Workbook()
    ws = wb.active
    for i in range(13):
        ws.append([f"SAMM note line {i}"])
    ws.append(
        [
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
    )
    ws.append([subj, clip, 1, onset, apex, offset, offset - onset + 1, "Micro", "R12", "Anger", 1, ""])
    d = root / "SAMM" / f"{subj:03d}" / clip
    d.mkdir(parents=True)
    a, b = shifted_texture(size, dx=0.5, dy=0.0, seed=subj)
    for n in range(onset, offset + 1):
        cv2.imwrite(str(d / f"{subj:03d}_{n:05d}.jpg"), a if n == onset else b)
    wb.save(root / "SAMM_Micro_FACS_Codes_v2.xlsx")
    return root

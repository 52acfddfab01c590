"""Locating a dataset's frame tree under the root a user gives (native folder names or one level less)."""

from __future__ import annotations

import re
from pathlib import Path

from mer.data.problems import DatasetError


def find_base(root: Path, candidates: list[str], subject_pattern: str) -> Path | None:
    """The first ``root/candidate`` that holds folders matching ``subject_pattern`` (a regex)."""
    rx = re.compile(subject_pattern)
    for c in candidates:
        base = root / c if c else root
        if base.is_dir() and any(p.is_dir() and rx.fullmatch(p.name) for p in base.iterdir()):
            return base
    return None


def find_crop_base(root: Path, candidates: list[str], subject_pattern: str) -> Path | None:
    """The first ``root/candidate`` holding subject folders whose clip folders contain ``reg_*`` crops
    (candidate '' = root itself: a root that *is* the crops folder)."""
    from mer.data.frames import scan_frames

    rx = re.compile(subject_pattern)
    for c in candidates:
        base = root / c if c else root
        if not base.is_dir():
            continue
        subjects = sorted(p for p in base.iterdir() if p.is_dir() and rx.fullmatch(p.name))
        for sdir in subjects[:3]:
            clips = sorted(p for p in sdir.iterdir() if p.is_dir())
            if any(scan_frames(c, True) for c in clips[:3]):
                return base
    return None


def choose_frames(
    dataset: str, frames: str, root: Path, raw: Path | None, cropped: Path | None, raw_hint: str, crop_hint: str
) -> tuple[Path, bool]:
    """(base folder, cropped?) for frames='auto'|'raw'|'cropped' with a clear error when absent."""
    if frames not in ("auto", "raw", "cropped"):
        raise ValueError(f"frames must be 'auto', 'raw' or 'cropped', got {frames!r}")
    if frames == "cropped" or (frames == "auto" and cropped is not None):
        if cropped is None:
            raise DatasetError(
                f"{dataset}: frames='cropped' but no crops found under {root} "
                f"(looked for {crop_hint}); use frames='raw' or 'auto'"
            )
        return cropped, True
    if raw is None:
        raise DatasetError(
            f"{dataset}: no frame folders found under {root} (looked for {raw_hint}). "
            "Point root at the folder that holds the dataset as distributed."
        )
    return raw, False


def check_root(dataset: str, root) -> Path:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{dataset}: root {root} is not a folder")
    return root

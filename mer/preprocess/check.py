"""``mer prepare --check``: read every frame of a dataset completely and list the bad ones.

The pipeline reads only the onset and apex frames (and, with ``smic_apex='max_diff'``, the frames in
between); a damaged frame elsewhere would go unnoticed until another setting needs it. This reads every
image file in every clip folder of the given samples (all of them, also outside onset..offset) with
:func:`mer.data.images.read_image` and reports the ones that are empty, truncated or undecodable.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mer.data.frames import IMAGE_EXT
from mer.data.images import check_image


@dataclass
class FrameReport:
    n_clips: int
    n_frames: int
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), sorted by path

    def summary(self) -> str:
        if not self.bad:
            return f"checked {self.n_frames} frames in {self.n_clips} clip folders: all read completely"
        return (
            f"checked {self.n_frames} frames in {self.n_clips} clip folders: {len(self.bad)} bad "
            "(restore these files from the dataset's original archive):"
        )


def clip_frames(folder: Path) -> list[str]:
    """Every image file in ``folder`` (any frame, raw or ``reg_`` crop), sorted."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        str(folder / n) for n in names if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXT
    )


def check_frames(samples, *, workers: int = 1, progress: bool = True) -> FrameReport:
    """Read every frame of the samples' clip folders completely (``workers`` threads)."""
    from tqdm.auto import tqdm

    folders = sorted({Path(f).parent for s in samples for f in s.frames})
    frames = [p for d in folders for p in clip_frames(d)]
    bad = []
    ex = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for path, why in tqdm(
            zip(frames, ex.map(check_image, frames), strict=True),
            total=len(frames),
            unit="frame",
            desc="check frames",
            disable=not progress,
        ):
            if why is not None:
                bad.append((path, why))
    finally:  # Ctrl-C: drop the queue instead of reading the remaining frames
        ex.shutdown(wait=True, cancel_futures=True)
    return FrameReport(len(folders), len(frames), bad)

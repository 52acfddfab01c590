"""What a dataset module finds under a root before validation (see :func:`mer.data.frames.build_samples`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mer.data.frames import Entry, middle_apex


@dataclass
class Discovered:
    entries: list[Entry]
    clip_dir: Callable[[Entry], Path | None]
    cropped: bool
    frames_index: Callable[[Entry], dict[int, str]] | None = None
    tolerate_gaps: bool = False
    apex_rule: Callable[[int, int], int] = middle_apex

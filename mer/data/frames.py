"""Frames on disk: scanning clip folders and validating annotated entries against them."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mer.data.problems import Problems
from mer.data.sample import Sample, emotion_label

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CROP_PREFIX = "reg_"
_NUM = re.compile(r"(\d+)$")


def scan_frames(folder: Path, cropped: bool) -> dict[int, str]:
    """{frame number: path} of the images in ``folder``; the number is the last digit run of the stem.

    ``cropped`` selects the dataset's crop files (``reg_`` prefix) or the raw ones (all others).
    """
    out: dict[int, str] = {}
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXT or name.startswith("."):
            continue
        if name.startswith(CROP_PREFIX) != cropped:
            continue
        m = _NUM.search(stem)
        if m:
            out[int(m.group(1))] = str(folder / name)
    return out


def ranges(numbers) -> str:
    """[3, 4, 5, 9] -> '3-5, 9' (for messages)."""
    nums = sorted(set(numbers))
    parts, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(parts)


def middle_apex(onset: int, offset: int) -> int:
    """The convention for clips without an apex: ``onset + (offset - onset) // 2``."""
    return onset + (offset - onset) // 2


@dataclass
class Entry:
    """An annotated clip before validation against the disk."""

    subject: str
    clip: str
    native_clip: str
    onset: int | None
    apex: int | None
    offset: int | None
    aus: str
    emotion: str
    source: str  # "file.xlsx row 12" or "folder"
    label: int | None = None  # when given (sample lists), overrides the emotion rule
    label_given: bool = False
    errata: str = ""  # the correction applied from the errata table (mer.data.errata)
    apex_estimated: bool = False  # the apex was set by a rule (errata), not read from the sheet


def build_samples(
    dataset: str,
    entries: list[Entry],
    clip_dir: Callable[[Entry], Path | None],
    *,
    cropped: bool,
    root: Path,
    problems: Problems,
    missing_apex: str = "estimate",
    apex_rule: Callable[[int, int], int] = middle_apex,
    tolerate_gaps: bool = False,
    frames_index: Callable[[Entry], dict[int, str]] | None = None,
) -> list[Sample]:
    """Validate entries against the frames on disk; problems go to ``problems``, good ones become Samples.

    missing_apex: 'estimate' (``apex_rule(onset, offset)``, flagged ``apex_is_estimated``, counted in a
    note) or 'error' (a problem). tolerate_gaps: frames missing between onset and offset are noted, not
    fatal, as long as the onset and apex frames exist (CAS(ME)^3 drops frames).
    """
    if missing_apex not in ("estimate", "error"):
        raise ValueError(f"missing_apex must be 'estimate' or 'error', got {missing_apex!r}")
    samples: list[Sample] = []
    seen: dict[tuple[str, str], str] = {}
    estimated, gappy = [], []
    for e in entries:
        where = f"{dataset} {e.subject}/{e.clip} ({e.source})"
        bad = False

        def fail(what: str, kind: str) -> None:
            nonlocal bad
            bad = True
            problems.add(where, what, kind)

        key = (e.subject, e.clip)
        if key in seen:
            fail(f"duplicate entry (also at {seen[key]})", "duplicate")
        seen.setdefault(key, e.source)
        label = e.label
        if not e.label_given:
            known, label = emotion_label(dataset, e.emotion)
            if not known:
                fail(
                    f"unknown emotion {e.emotion!r} (expected one of {sorted(k for k in _table(dataset))})",
                    "unknown-emotion",
                )
        if e.onset is None or e.offset is None:
            fail("onset or offset frame missing", "missing-onset-offset")
            continue
        if e.onset > e.offset:
            fail(f"onset {e.onset} is after offset {e.offset}", "onset-after-offset")
            continue
        apex, est = e.apex, e.apex_estimated
        if apex is None:
            if missing_apex == "estimate":
                apex, est = apex_rule(e.onset, e.offset), True
            else:
                fail(
                    "no apex annotated ('/' or blank); pass missing_apex='estimate' to use the middle frame",
                    "missing-apex",
                )
                continue
        if not e.onset <= apex <= e.offset:
            fail(f"apex {apex} outside onset..offset {e.onset}..{e.offset}", "apex-range")
            continue
        folder = clip_dir(e)
        if frames_index is not None:
            index = frames_index(e)
        else:
            if folder is None or not folder.is_dir():
                fail(f"clip folder not found (expected {folder})", "missing-folder")
                continue
            index = scan_frames(folder, cropped)
        if not index:
            kind = "cropped (reg_*)" if cropped else "raw"
            fail(f"no {kind} frames in {folder}", "no-frames")
            continue
        want = range(e.onset, e.offset + 1)
        missing = [n for n in want if n not in index]
        if missing:
            need = [n for n in (e.onset, apex) if n in missing]
            if not tolerate_gaps or need:
                have = f"{min(index)}..{max(index)}"
                fail(
                    f"{len(missing)} frame(s) missing on disk in {folder}: {ranges(missing)} "
                    f"(frames present: {have}, {len(index)} files)",
                    "missing-frames",
                )
                continue
            gappy.append(f"{e.subject}/{e.clip} [{ranges(missing)}]")
        if bad:
            continue
        if est and not e.errata:  # errata have their own notice
            estimated.append(f"{e.subject}/{e.clip}")
        samples.append(
            Sample(
                dataset=dataset,
                subject=e.subject,
                clip=e.clip,
                frames=tuple(index[n] for n in want if n in index),
                onset=e.onset,
                apex=apex,
                offset=e.offset,
                aus=e.aus,
                emotion=e.emotion,
                label=label,
                apex_is_estimated=est,
                cropped=cropped,
                root=str(root),
                native_clip=e.native_clip,
                missing_frames=tuple(n for n in missing),
                errata=e.errata,
            )
        )
    if estimated and dataset != "smic":
        problems.note(
            f"{len(estimated)} sample(s) have no annotated apex; apex set to the middle frame "
            f"(apex_is_estimated=True): {', '.join(estimated)}. Pass missing_apex='error' to "
            "refuse them instead."
        )
    if gappy:
        problems.note(
            f"{len(gappy)} sample(s) have frames missing between onset and offset (onset and "
            f"apex present, kept; Sample.missing_frames lists them): {'; '.join(gappy)}"
        )
    return samples


def _table(dataset: str):
    from mer.data.sample import EMOTION_TO_LABEL

    return EMOTION_TO_LABEL[dataset]

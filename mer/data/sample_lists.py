"""Protocol sample lists (``dataset,subject,clip,label``), with or without a header, any spelling of the
subjects (``6`` -> ``006``, ``1`` -> ``sub01``, ``s1`` -> ``s01``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mer.data.problems import DatasetError

LISTS_DIR = Path(__file__).parent / "lists"


@dataclass(frozen=True)
class ListEntry:
    dataset: str
    subject: str
    clip: str
    label: int
    source: str  # "file.csv row N"


def norm_subject(dataset: str, subject: str) -> str | None:
    from mer.data import casme2, casme3, samm, smic

    fn = {
        "casme2": casme2.norm_subject,
        "samm": samm.norm_subject,
        "smic": smic.norm_subject,
        "casme3": casme3.norm_subject,
    }.get(dataset)
    return fn(subject) if fn else None


def norm_clip(dataset: str, clip: str) -> str:
    if dataset == "smic":
        from mer.data.smic import norm_clip as f

        return f(clip) or clip
    return clip


def read_sample_list(path) -> list[ListEntry]:
    """Entries of a ``dataset,subject,clip,label`` CSV (header optional). Raises DatasetError listing
    every malformed or duplicated row."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"sample list {path} does not exist")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:4]] == ["dataset", "subject", "clip", "label"]:
        start, rows = 2, rows[1:]
    else:
        start = 1
    out, errors, seen = [], [], {}
    for i, r in enumerate(rows, start=start):
        src = f"{path.name} row {i}"
        if len(r) < 4:
            errors.append(f"  - {src}: expected dataset,subject,clip,label, got {r}")
            continue
        d, s, c, lab = (x.strip() for x in r[:4])
        d = d.lower()
        subj = norm_subject(d, s)
        if subj is None:
            errors.append(f"  - {src}: unknown dataset {d!r} or subject {s!r}")
            continue
        try:
            label = int(lab)
            assert label in (0, 1, 2)
        except (ValueError, AssertionError):
            errors.append(f"  - {src}: label {lab!r} is not 0, 1 or 2")
            continue
        e = ListEntry(d, subj, norm_clip(d, c), label, src)
        key = (e.dataset, e.subject, e.clip)
        if key in seen:
            errors.append(f"  - {src}: duplicate of {seen[key]} ({d} {subj}/{e.clip})")
            continue
        seen[key] = src
        out.append(e)
    if errors:
        raise DatasetError(f"sample list {path}: {len(errors)} bad row(s):\n" + "\n".join(errors))
    if not out:
        raise DatasetError(f"sample list {path} has no rows")
    return out


def shipped_list(name: str) -> list[ListEntry]:
    """A list shipped in ``mer/data/lists``: 'megc2019_composite' (442) or 'megc2019_official_gt_441'."""
    return read_sample_list(LISTS_DIR / f"{name}.csv")

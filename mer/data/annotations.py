"""Reading the datasets' annotation spreadsheets with their quirks.

- the header row is found by its content (SAMM has ~13 note rows above it);
- columns are matched by a normalised name (case, spaces and punctuation ignored), so ``OnsetFrame``,
  ``Onset Frame`` and ``Onset`` all mean the onset; blank-headed columns are ignored;
- frame numbers may be ints, floats (``46.0``), strings, ``/``, blanks or ``-1`` (the last three: missing).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mer.data.problems import DatasetError

# canonical column -> accepted normalised header names
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "subject": ("subject", "sub"),
    "filename": ("filename", "file", "clip"),
    "onset": ("onsetframe", "onset"),
    "apex": ("apexframe", "apex"),
    "offset": ("offsetframe", "offset"),
    "aus": ("actionunits", "au", "aus", "actionunit"),
    "emotion": ("estimatedemotion", "emotion"),
}
REQUIRED = ("subject", "filename", "onset", "apex", "offset", "emotion")


def norm_header(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return re.sub(r"[^a-z0-9]", "", str(value).lower())


@dataclass
class Row:
    """One annotation row: canonical column -> raw cell value, plus its 1-based row number in the file."""

    number: int
    cells: dict[str, object]


def read_rows(path: str | os.PathLike, *, max_header_row: int = 40) -> list[Row]:
    """Rows of an annotation table (.xlsx/.xls/.csv) keyed by canonical column names."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            raw = pd.read_csv(path, header=None, dtype=object, keep_default_na=False)
        else:
            raw = pd.read_excel(path, header=None, dtype=object)
    except Exception as e:  # unreadable file: say which and why
        raise DatasetError(f"cannot read annotation file {path}: {type(e).__name__}: {e}") from e
    values = raw.values.tolist()
    header_idx, mapping = None, {}
    best = (0, None, {})  # (required columns found, row index, mapping): the likeliest header row
    for i, row in enumerate(values[:max_header_row]):
        names = [norm_header(v) for v in row]
        found = {}
        for canon, aliases in COLUMN_ALIASES.items():
            for j, n in enumerate(names):
                if n in aliases and canon not in found:
                    found[canon] = j
        if all(c in found for c in REQUIRED):
            header_idx, mapping = i, found
            break
        n_req = sum(c in found for c in REQUIRED)
        if n_req > best[0]:
            best = (n_req, i, found)
    if header_idx is None and best[0] >= 3:  # a header row with some required column(s) missing
        n_req, i, found = best
        missing = [c for c in REQUIRED if c not in found]
        cells = ", ".join(str(v) for v in values[i] if norm_header(v))
        want = "; ".join(f"'{c}' (a header named {' or '.join(COLUMN_ALIASES[c])}, any case/spacing)" for c in missing)
        raise DatasetError(
            f"{path}: the header row (row {i + 1}: {cells}) has no column for {want}. "
            "Add the column, or pass the dataset's original annotation file."
        )
    if header_idx is None:
        want = ", ".join(f"{c} ({'/'.join(COLUMN_ALIASES[c])})" for c in REQUIRED)
        raise DatasetError(
            f"{path}: no header row found in the first {max_header_row} rows; expected columns {want}. "
            "Is this the right annotation file?"
        )
    rows = []
    for i in range(header_idx + 1, len(values)):
        cells = {c: values[i][j] for c, j in mapping.items()}
        if all(_blank(cells.get(c)) for c in ("subject", "filename")):
            continue  # trailing empty rows
        rows.append(Row(number=i + 1, cells=cells))
    return rows


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == ""


def parse_frame(value) -> tuple[int | None, str | None]:
    """(frame number or None if missing, error message or None)."""
    if _blank(value):
        return None, None
    s = str(value).strip()
    if s in ("/", "-", "-1", "nan", "NaN", "None"):
        return None, None
    try:
        f = float(s)
    except ValueError:
        return None, f"{s!r} is not a frame number"
    if f != int(f):
        return None, f"{s!r} is not an integer frame number"
    if f < 0:
        return None, None
    return int(f), None


def cell_text(value) -> str:
    if _blank(value):
        return ""
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value).strip()


def find_annotation(root: Path, pattern: str, what: str, hint: str) -> Path:
    """The annotation file in ``root`` (or one folder down) whose name matches ``pattern``.

    If several match, the last in sorted order (the newest dated version) is used.
    """
    rx = re.compile(pattern, re.IGNORECASE)
    hits: list[Path] = []
    for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []:
        try:
            hits += [p for p in d.iterdir() if p.is_file() and rx.search(p.name)]
        except PermissionError:
            continue
        if hits:
            break
    if not hits:
        raise DatasetError(
            f"no {what} annotation file found in {root} (looked for {hint} in it and its "
            "sub-folders); pass annotation=PATH (CLI: --annotation PATH)"
        )
    return sorted(hits, key=lambda p: p.name)[-1]


def rows_to_entries(dataset: str, rows: list[Row], path: Path, norm_subject, problems, clip_name=None) -> list:
    """Annotation rows -> :class:`mer.data.frames.Entry` (unparseable cells become problems).

    norm_subject(cell) -> protocol subject spelling or None; clip_name(filename, onset) -> clip id
    (default: the Filename itself).
    """
    from mer.data.frames import Entry

    entries = []
    for r in rows:
        src = f"{path.name} row {r.number}"
        subj = norm_subject(r.cells.get("subject"))
        fname = cell_text(r.cells.get("filename"))
        where = f"{dataset} {subj or cell_text(r.cells.get('subject'))}/{fname} ({src})"
        if subj is None:
            problems.add(where, f"subject {r.cells.get('subject')!r} not understood", "bad-subject")
            continue
        if not fname:
            problems.add(where, "empty Filename", "bad-filename")
            continue
        nums, bad = {}, False
        if clip_name:  # the clip id the protocol uses, so that sample-list filtering sees this row
            on, _ = parse_frame(r.cells.get("onset"))
            where = f"{dataset} {subj}/{clip_name(fname, on)} ({src})"
        for c in ("onset", "apex", "offset"):
            nums[c], err = parse_frame(r.cells.get(c))
            if err:
                problems.add(where, f"{c}: {err}", "bad-frame-number")
                bad = True
        if bad:
            continue
        clip = clip_name(fname, nums["onset"]) if clip_name else fname
        entries.append(
            Entry(
                subject=subj,
                clip=clip,
                native_clip=fname,
                onset=nums["onset"],
                apex=nums["apex"],
                offset=nums["offset"],
                aus=cell_text(r.cells.get("aus")),
                emotion=cell_text(r.cells.get("emotion")),
                source=src,
            )
        )
    return entries


def int_subject(value, fmt: str, prefix_rx: str = "") -> str | None:
    """Subject cell -> formatted spelling: 1 / '1' / 'sub1' / 'sub01' -> fmt.format(1)."""
    s = cell_text(value)
    m = re.fullmatch(prefix_rx + r"0*(\d+)", s, re.IGNORECASE)
    return fmt.format(int(m.group(1))) if m else None

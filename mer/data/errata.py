"""Known errors in the public coding sheets, corrected openly (table: ``mer/data/lists/errata.csv``).

Each row names a clip, the field and the value the sheet has, what is wrong with it, the correction and
the evidence for it. A correction is applied only while the sheet still has that value *and* the
problem is still there (a later, fixed sheet is left alone), is announced in one warning line, and is
recorded on the sample (``Sample.errata``, e.g. for a run's samples.csv). ``errata="none"`` turns the
table off: the rows are then reported as the validation problems they are (apex outside onset..offset).

Corrections: ``middle`` sets the apex to ``onset + (offset - onset) // 2`` and flags it
``apex_is_estimated`` (so ``PrepConfig.smic_apex='max_diff'`` rereads it from the frames as the frame
that differs most from the onset, as for every unannotated apex). The rows and their evidence:
docs/data.md ("Annotation errata").
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mer.data.problems import DatasetError

ERRATA_TABLE = Path(__file__).parent / "lists" / "errata.csv"
CORRECTIONS = ("middle",)


@dataclass(frozen=True)
class Erratum:
    dataset: str
    subject: str
    clip: str
    field: str
    sheet_value: int
    problem: str
    correction: str
    evidence: str


def read_errata(path=None) -> list[Erratum]:
    """The errata table (default: the shipped one)."""
    path = Path(path) if path is not None else ERRATA_TABLE
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DatasetError(
            f"cannot read the errata table {path}: {e.strerror or e}; pass errata='none' or a readable table"
        ) from None
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            e = Erratum(
                r["dataset"].strip(),
                r["subject"].strip(),
                r["clip"].strip(),
                r["field"].strip(),
                int(r["sheet_value"]),
                r["problem"].strip(),
                r["correction"].strip(),
                r["evidence"].strip(),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DatasetError(
                f"errata table {path} row {i} is malformed (columns: dataset,subject,clip,"
                "field,sheet_value,problem,correction,evidence)"
            ) from None
        if e.field != "apex" or e.correction not in CORRECTIONS:
            raise DatasetError(
                f"errata table {path} row {i}: only field 'apex' with correction "
                f"{'/'.join(CORRECTIONS)} is supported, got {e.field}/{e.correction}"
            )
        out.append(e)
    return out


def resolve(errata) -> list[Erratum]:
    """'shipped' (default) -> the shipped table; 'none' -> []; a path -> that table."""
    if errata in (None, "none"):
        return []
    if errata == "shipped":
        return read_errata()
    if isinstance(errata, (str, Path)):
        return read_errata(errata)
    raise ValueError(f"errata must be 'shipped', 'none' or a path to a table, got {errata!r}")


def apply_errata(dataset: str, entries, table: list[Erratum], problems) -> int:
    """Correct the matching entries in place (see the module docstring); returns how many; one note."""
    rows = {(e.subject, e.clip): e for e in table if e.dataset == dataset}
    done = []
    for ent in entries:
        er = rows.get((ent.subject, ent.clip))
        if er is None or ent.apex != er.sheet_value or ent.onset is None or ent.offset is None:
            continue
        if ent.onset <= ent.apex <= ent.offset or ent.onset > ent.offset:
            continue  # nothing (left) to correct, or a different problem: validation reports it
        new = ent.onset + (ent.offset - ent.onset) // 2
        ent.errata = (
            f"apex {ent.apex} -> {new} (sheet: {er.problem}; set to the middle of onset {ent.onset}.."
            f"offset {ent.offset}; mer errata table)"
        )
        ent.apex, ent.apex_estimated = new, True
        done.append(f"{ent.subject}/{ent.clip} apex {er.sheet_value} -> {new} ({er.problem})")
    if done:
        problems.note(
            f"annotation errata applied to {len(done)} sample(s): {'; '.join(done)}; recorded in "
            "Sample.errata (errata='none' / --errata none keeps the sheet as it is)"
        )
    return len(done)

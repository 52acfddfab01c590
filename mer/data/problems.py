"""Collect every validation problem of a load and report them together (error or warnings)."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

MAX_LINES = 60  # problems listed in an error message (the exception keeps all of them)


class DatasetError(ValueError):
    """A dataset does not match its annotations (the message lists every problem and how to proceed)."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class DatasetWarning(UserWarning):
    """Samples were excluded (on_error='warn') or estimated (e.g. apex); the message says which."""


@dataclass(frozen=True)
class Problem:
    where: str  # e.g. "casme2 sub01/EP02_01f (CASME2-coding-20140508.xlsx row 3)"
    what: str  # human message
    kind: str  # short category: missing-frames, missing-folder, apex-range, unknown-emotion, ...


@dataclass
class Problems:
    """Accumulates problems (fatal per sample) and notes (non-fatal, always reported)."""

    dataset: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, where: str, what: str, kind: str) -> None:
        self.problems.append(Problem(where, what, kind))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self, on_error: str, n_ok: int, hint: str = "") -> None:
        """Raise (on_error='raise') or warn (on_error='warn') about the problems; warn about notes."""
        for text in self.notes:
            warnings.warn(f"{self.dataset}: {text}", DatasetWarning, stacklevel=3)
        if not self.problems:
            return
        bad = {p.where for p in self.problems}
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(Counter(p.kind for p in self.problems).items()))
        lines = [f"  - {p.where}: {p.what}" for p in self.problems[:MAX_LINES]]
        if len(self.problems) > MAX_LINES:
            lines.append(
                f"  ... and {len(self.problems) - MAX_LINES} more (all of them are in the "
                "exception's .problems / the warning's text with on_error='warn')"
            )
        head = (
            f"{self.dataset}: {len(self.problems)} problem(s) in {len(bad)} sample(s) ({kinds}); "
            f"{n_ok} sample(s) are fine."
        )
        if on_error == "raise":
            msg = "\n".join(
                [
                    head,
                    *lines,
                    "Fix the files/annotations, point `root`/`annotation` at the right place, "
                    "or pass on_error='warn' to exclude these samples (they are counted)."
                    + (f" {hint}" if hint else ""),
                ]
            )
            raise DatasetError(msg, self.problems)
        every = [f"  - {p.where}: {p.what}" for p in self.problems]
        warnings.warn(
            "\n".join([head + f" Excluded {len(bad)} sample(s) (on_error='warn'):", *every]),
            DatasetWarning,
            stacklevel=3,
        )


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")

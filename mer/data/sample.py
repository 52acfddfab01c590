"""The `Sample` record every loader returns, and the 3-class label rules of the protocols."""

from __future__ import annotations

from dataclasses import dataclass

from mer.labels import LABEL_NAMES, NEGATIVE, POSITIVE, SURPRISE  # noqa: F401  (3-class labels, re-exported)

DATASETS = ("casme2", "samm", "smic", "casme3")

# Native emotion (lower-cased) -> 3-class label; emotions mapped to None are outside the protocol
# ("others"). An emotion missing from its table is reported as a validation problem.
EMOTION_TO_LABEL: dict[str, dict[str, int | None]] = {
    "casme2": {"repression": 0, "disgust": 0, "fear": 0, "sadness": 0, "happiness": 1, "surprise": 2, "others": None},
    "samm": {
        "anger": 0,
        "contempt": 0,
        "disgust": 0,
        "fear": 0,
        "sadness": 0,
        "happiness": 1,
        "surprise": 2,
        "other": None,
        "others": None,
    },
    "smic": {"negative": 0, "positive": 1, "surprise": 2},
    "casme3": {"disgust": 0, "fear": 0, "anger": 0, "sad": 0, "happy": 1, "surprise": 2, "others": None},
}


def emotion_label(dataset: str, emotion: str) -> tuple[bool, int | None]:
    """(known, label) for a native emotion string; known is False for a word not in the table."""
    table = EMOTION_TO_LABEL[dataset]
    key = str(emotion).strip().lower()
    if key not in table:
        return False, None
    return True, table[key]


@dataclass(frozen=True)
class Sample:
    """One micro-expression clip.

    dataset: 'casme2' | 'samm' | 'smic' | 'casme3'.
    subject, clip: the protocol spellings (``sub01``/``EP02_01f``, ``006``/``006_1_2``,
        ``s01``/``s01_ne_01``, ``spNO.1``/``a_175``: CAS(ME)^3 clips are ``<Filename>_<onset>`` because
        several micro-expressions share one Filename).
    frames: paths of the frames onset..offset in frame order (CAS(ME)^3: only those present on disk,
        see ``missing_frames``).
    onset, apex, offset: frame numbers as in the dataset (the number in the image file name).
    aus: the action-unit string as annotated; emotion: the native emotion word.
    label: 0 negative, 1 positive, 2 surprise, or None outside the 3-class protocol.
    apex_is_estimated: True when the dataset gives no apex (SMIC, CASME II '/' rows, SAMM blanks) and
        the loader's rule chose it.
    cropped: True when ``frames`` are the dataset's own face crops.
    root: the dataset root the sample was loaded from.
    native_clip: the clip's folder name on disk (``s1_ne_01``, ``a``).
    missing_frames: frame numbers in onset..offset absent on disk (tolerated for CAS(ME)^3 only).
    errata: the correction applied to this sample's annotation from mer's errata table (e.g. "apex 1143
        -> 1117 (sheet: apex after the offset (1134); ...)"), "" when none (see mer.data.errata).
    """

    dataset: str
    subject: str
    clip: str
    frames: tuple[str, ...]
    onset: int
    apex: int
    offset: int
    aus: str = ""
    emotion: str = ""
    label: int | None = None
    apex_is_estimated: bool = False
    cropped: bool = False
    root: str = ""
    native_clip: str = ""
    missing_frames: tuple[int, ...] = ()
    errata: str = ""

    @property
    def uid(self) -> str:
        """``dataset/subject/clip``: unique within a composite."""
        return f"{self.dataset}/{self.subject}/{self.clip}"

    @property
    def subject_key(self) -> tuple[str, str]:
        """(dataset, subject): the unit of subject-grouped protocols."""
        return (self.dataset, self.subject)

    def frame_path(self, number: int) -> str:
        """Path of frame ``number`` (KeyError-like ValueError if it is not on disk)."""
        numbers = self.frame_numbers()
        try:
            return self.frames[numbers.index(number)]
        except ValueError:
            raise ValueError(
                f"{self.uid}: frame {number} is not on disk "
                f"(clip has {len(self.frames)} frames {self.onset}..{self.offset})"
            ) from None

    def frame_numbers(self) -> list[int]:
        """The frame number of each entry of ``frames``."""
        missing = set(self.missing_frames)
        return [n for n in range(self.onset, self.offset + 1) if n not in missing]

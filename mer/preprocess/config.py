"""PrepConfig: every parameter of the preprocessing pipeline (all of them key the cache)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mer.preprocess.flow import METHODS

#: bump when the pipeline's arithmetic changes, so old cache entries are never served
PIPELINE_VERSION = 2


@dataclass(frozen=True)
class PrepConfig:
    """Preprocessing parameters.

    size: side S of the output maps (HTNet: 28); must be even (regions are S/2 windows tiled 2x2).
    flow: 'tvl1' (OpenCV DualTVL1, default), 'farneback' or 'dis'.
    face_size: side the face crop is resized to before the flow (128: TV-L1 ~0.25 s per sample on one
        core; see docs/data.md for measured times).
    face: 'auto' (the dataset's crops as they are when the sample is cropped, else detect), 'detect'
        (always run the Haar detector on the onset frame), 'full' (use the whole frame).
    face_margin: margin added around a detected face box, as a fraction of its side on each side.
    motion_compensation: subtract the mean flow of the nose-root window (between the eyes) to cancel
        head motion.
    regions: 'auto' (landmarks when dlib + face_recognition_models are installed, else canonical),
        'canonical' (fixed positions in the face box) or 'landmarks' (error if no backend).
    smic_apex: for samples without an annotated apex (``apex_is_estimated``: SMIC, CASME II '/' rows):
        'sample' (the loader's choice, middle frame by default), 'middle', or 'max_diff' (the frame that
        differs most from the onset, mean absolute grey difference at face_size).
    """

    size: int = 28
    flow: str = "tvl1"
    face_size: int = 128
    face: str = "auto"
    face_margin: float = 0.1
    motion_compensation: bool = False
    regions: str = "auto"
    smic_apex: str = "sample"

    def __post_init__(self):
        errs = []
        if self.size < 4 or self.size % 2:
            errs.append(f"size must be an even number >= 4, got {self.size}")
        if self.flow not in METHODS:
            errs.append(f"flow must be one of {METHODS}, got {self.flow!r}")
        if self.face_size < self.size:
            errs.append(f"face_size ({self.face_size}) must be >= size ({self.size})")
        if self.face not in ("auto", "detect", "full"):
            errs.append(f"face must be 'auto', 'detect' or 'full', got {self.face!r}")
        if not 0 <= self.face_margin <= 1:
            errs.append(f"face_margin must be in [0, 1], got {self.face_margin}")
        if self.regions not in ("auto", "canonical", "landmarks"):
            errs.append(f"regions must be 'auto', 'canonical' or 'landmarks', got {self.regions!r}")
        if self.smic_apex not in ("sample", "middle", "max_diff"):
            errs.append(f"smic_apex must be 'sample', 'middle' or 'max_diff', got {self.smic_apex!r}")
        if errs:
            raise ValueError("invalid PrepConfig: " + "; ".join(errs))

    def to_dict(self) -> dict:
        return asdict(self)

"""Micro-expression datasets: CASME II, SAMM, SMIC-HS, CAS(ME)^3 Part A and the MEGC2019 composite.

    from mer.data import load_dataset, megc2019_composite
    samples = megc2019_composite(casme2="/data/CASME2", samm="/data/SAMM", smic="/data/SMIC")  # 442
    rel = load_htnet_release("/data/HTNet")   # the composite as the public HTNet release ships it

Layouts, validation rules and the protocol spellings: docs/data.md.
"""

from mer.data.htnet_release import HtnetRelease, HtnetReleaseError, load_htnet_release
from mer.data.images import ImageError
from mer.data.loaders import casme3_part_a, load_dataset, megc2019_composite
from mer.data.problems import DatasetError, DatasetWarning
from mer.data.sample import (
    DATASETS,
    EMOTION_TO_LABEL,
    LABEL_NAMES,
    Sample,
    emotion_label,
)
from mer.data.sample_lists import ListEntry, read_sample_list, shipped_list

__all__ = [
    "DATASETS",
    "EMOTION_TO_LABEL",
    "LABEL_NAMES",
    "DatasetError",
    "DatasetWarning",
    "HtnetRelease",
    "HtnetReleaseError",
    "ImageError",
    "ListEntry",
    "Sample",
    "casme3_part_a",
    "emotion_label",
    "load_dataset",
    "load_htnet_release",
    "megc2019_composite",
    "read_sample_list",
    "shipped_list",
]

"""Synthetic micro-expression datasets in the native layouts of CASME II, SAMM and SMIC-HS.

    from mer.synth import SynthConfig, generate
    generate(SynthConfig(preset="composite", difficulty="calibrated", seed=0), "data/synth", workers=2)

Modules: ``config`` (SynthConfig, the Difficulty knob), ``identity`` (synthetic subjects), ``face``
(portrait rendering), ``aus`` (FACS action units as displacement fields, emotion prototypes), ``plan``
(every clip's annotation and nuisances, no pixels), ``render`` (frames), ``writers`` (native files),
``generate`` (the whole dataset, worker processes), ``contact`` (contact sheet), ``baseline``
(region mean flow + logistic regression, LOSO), ``calibrate`` (flow statistics against the real composite).
Documentation: docs/synth.md.
"""

from mer.synth.config import DIFFICULTY_NAMES, Difficulty, SynthConfig, parse_difficulty
from mer.synth.contact import contact_sheet
from mer.synth.generate import Summary, generate
from mer.synth.plan import ClipPlan, make_plan

__all__ = [
    "SynthConfig",
    "Difficulty",
    "DIFFICULTY_NAMES",
    "parse_difficulty",
    "generate",
    "Summary",
    "make_plan",
    "ClipPlan",
    "contact_sheet",
]

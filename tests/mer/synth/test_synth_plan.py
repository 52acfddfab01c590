"""The generation plan: the composite's structure, vocabularies and determinism (no rendering)."""

from __future__ import annotations

from collections import Counter

import pytest

from mer.synth.config import Difficulty, SynthConfig, parse_difficulty
from mer.synth.plan import make_plan, read_list

CLASS_COUNTS = {"casme2": {0: 88, 1: 32, 2: 25}, "samm": {0: 92, 1: 26, 2: 15}, "smic": {0: 70, 1: 51, 2: 43}}
SUBJECTS = {"casme2": 24, "samm": 28, "smic": 16}
VOCAB = {
    "casme2": {"happiness", "surprise", "disgust", "repression", "others", "fear", "sadness"},
    "samm": {"Anger", "Contempt", "Disgust", "Fear", "Sadness", "Happiness", "Surprise", "Other"},
    "smic": {"negative", "positive", "surprise"},
}
NEGATIVE = {
    "casme2": {"disgust", "repression", "fear", "sadness"},
    "samm": {"Anger", "Contempt", "Disgust", "Fear", "Sadness"},
    "smic": {"negative"},
}


@pytest.fixture(scope="module")
def plan():
    return make_plan(SynthConfig())


def test_composite_list_is_the_shipped_list(plan):
    listed = [(p.dataset, p.subject, p.clip, p.label) for p in plan if p.in_list]
    assert listed == read_list()
    assert len(listed) == 442


@pytest.mark.parametrize("ds", ["casme2", "samm", "smic"])
def test_composite_counts_and_balance(plan, ds):
    listed = [p for p in plan if p.in_list and p.dataset == ds]
    assert dict(Counter(p.label for p in listed)) == CLASS_COUNTS[ds]
    assert len({p.subject for p in listed}) == SUBJECTS[ds]
    for p in plan:
        if p.dataset != ds:
            continue
        assert p.emotion in VOCAB[ds], p
        if p.in_list:
            assert (p.emotion in NEGATIVE[ds]) == (p.label == 0), p
            assert (p.emotion.lower() in ("happiness", "positive")) == (p.label == 1), p
        assert p.onset < p.apex < p.offset and p.onset < p.apex_noted < p.offset
        n_ms = (p.offset - p.onset) * 1000 / p.fps
        assert 100 <= n_ms <= 500, (p, n_ms)  # micro-expressions: under half a second


def test_others_and_excluded_clips(plan):
    extra = [p for p in plan if not p.in_list]
    assert {p.emotion for p in extra if p.dataset == "casme2"} == {"others", "disgust"}
    assert sum(p.emotion == "disgust" for p in extra) == 2  # as in the real composite
    assert {p.emotion for p in extra if p.dataset == "samm"} == {"Other"}
    assert not [p for p in extra if p.dataset == "smic"]
    c2_subjects = {p.subject for p in plan if p.dataset == "casme2"}
    assert len(c2_subjects) == 26 and {"sub10", "sub18"} <= c2_subjects  # the real CASME II's 26
    keys = [(p.dataset, p.subject, p.clip) for p in plan]
    assert len(keys) == len(set(keys))


def test_missing_apex_rows(plan):
    no_apex = Counter(p.dataset for p in plan if not p.apex_annotated)
    assert no_apex["casme2"] == 8 and no_apex["samm"] == 3 and no_apex["smic"] == 164
    for p in plan:
        if not p.apex_annotated and p.dataset != "smic":
            assert p.apex == p.onset + (p.offset - p.onset) // 2  # the loaders' estimate is then exact


def test_plan_is_deterministic_and_seed_dependent(plan):
    assert make_plan(SynthConfig()) == plan
    other = make_plan(SynthConfig(seed=1))
    assert [(p.dataset, p.subject, p.clip, p.label) for p in other if p.in_list] == read_list()
    assert [p.aus for p in other] != [p.aus for p in plan]


def test_difficulty_knob():
    assert parse_difficulty("medium") == 0.5 and parse_difficulty("0.3") == 0.3
    for bad in ("extreme", "1.5", -0.1):
        with pytest.raises(ValueError, match="difficulty"):
            parse_difficulty(bad)
    easy, hard = Difficulty.from_level(0.2), Difficulty.from_level(0.8)
    assert easy.amplitude_px > hard.amplitude_px
    assert 0.5 <= hard.amplitude_px and easy.amplitude_px <= 3.0  # 0.5-3 px (docs/synth.md)
    for f in ("drift_px", "rotation_deg", "noise_sigma", "blink_prob", "distractor_prob", "mismatch"):
        assert getattr(easy, f) < getattr(hard, f), f
    with pytest.raises(ValueError, match="preset"):
        SynthConfig(preset="huge")

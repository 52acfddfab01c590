"""Fixtures for the synthetic-data tests: one tiny dataset generated per session."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(output folder, Summary, wall seconds) of `tiny` at the default difficulty, seed 0."""
    from mer.synth.config import SynthConfig
    from mer.synth.generate import generate

    out = tmp_path_factory.mktemp("synth") / "tiny"
    t0 = time.perf_counter()
    summary = generate(SynthConfig(preset="tiny"), out, progress=False)
    return out, summary, time.perf_counter() - t0

"""Fixtures of the training tests: a tiny synthetic composite (generated once per session), a shared
preprocessing cache and a helper that builds small TrainConfigs of the tiny registered model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SIZE = 16  # map side of the tiny runs (htnet_tiny's image size)
TINY_MODEL = "htnet_tiny"  # a registered mer.models variant that trains in seconds


@pytest.fixture(scope="session")
def synth_tiny(tmp_path_factory) -> Path:
    """`mer synth --preset tiny --seed 0` output: 6 subjects (2 per dataset), 18 protocol samples."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    from mer.synth.config import SynthConfig
    from mer.synth.generate import generate

    generate(SynthConfig(preset="tiny", seed=0), out, progress=False)
    return out


@pytest.fixture(scope="session")
def prep_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepcache")


@pytest.fixture
def make_cfg(synth_tiny, prep_cache, tmp_path):
    """make_cfg(**overrides) -> a TrainConfig for a 2-epoch LOSO run on the tiny synthetic composite."""
    from mer.preprocess import PrepConfig
    from mer.train import TrainConfig

    def make(**kw):
        base = dict(
            data=str(synth_tiny),
            protocol="loso",
            model=TINY_MODEL,
            epochs=2,
            batch_size=8,
            lr=3e-3,
            prep=PrepConfig(flow="farneback", size=SIZE),
            out=str(tmp_path / "run"),
            cache_dir=str(prep_cache),
            progress=False,
        )
        base.update(kw)
        return TrainConfig(**base)

    return make


@pytest.fixture
def subprocess_env() -> dict:
    """Environment for `mer` subprocesses: one thread."""
    return dict(os.environ, OMP_NUM_THREADS="1")

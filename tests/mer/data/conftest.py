"""Fixtures of the loader tests (builders live in data_fixtures.py)."""

from __future__ import annotations

import pytest
from data_fixtures import make_casme2


@pytest.fixture
def casme2_root(tmp_path):
    return make_casme2(
        tmp_path / "casme2",
        [
            (1, "EP02_01f", 46, 59, 70, "happiness"),
            (1, "EP19_05f", 10, 12, 15, "repression"),
            (2, "EP01_11f", 5, "/", 11, "disgust"),
            (2, "EP03_02", 20, 22, 24, "others"),
        ],
        raw=True,
        cropped=True,
    )

"""A tiny model that signals its own process on cue, for the kill/interrupt tests of `mer train`.

    mer train --model fault_models:tiny ...      # with tests/mer/train on PYTHONPATH

It is mer.models' htnet_tiny (same weights for the same seed, so its runs equal htnet_tiny's). With
MER_TEST_FAULT="SIGNAL:RANK:GLOB" (e.g. "KILL:1:folds/001-*/last.pt") in the environment, the process
of torchrun rank RANK ("*": any) sends itself SIGSIGNAL on its first training step after GLOB matches a
file under MER_TEST_FAULT_DIR (the run directory): e.g. after fold 1 wrote its first epoch checkpoint.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def tiny(**kwargs):
    from mer.models import create_model

    model = create_model("htnet_tiny", **kwargs)
    cue = os.environ.get("MER_TEST_FAULT")
    if cue:
        sig, rank, pattern = cue.split(":", 2)
        root = Path(os.environ["MER_TEST_FAULT_DIR"])
        if rank in ("*", os.environ.get("RANK", "0")):

            def pull_the_plug(module, args):
                if module.training and any(root.glob(pattern)):
                    os.kill(os.getpid(), getattr(signal, "SIG" + sig))

            model.register_forward_pre_hook(pull_the_plug)
    return model

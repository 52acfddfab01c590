"""Training and evaluation of micro-expression models: LOSO / subject-grouped K-fold / cross-dataset,
honest model selection, resumable run directories, parallel and torchrun fold sharding.

    from mer.train import TrainConfig, run_training
    metrics = run_training(TrainConfig(data="synth", protocol="kfold:5", out="runs/demo"))

Command line: `mer train`, `mer evaluate`, `mer predict`; docs/training.md.
"""
from mer.train.config import ConfigMismatch, TrainConfig
from mer.train.loop import FoldTask, InjectedInterrupt, train_fold
from mer.train.runner import FoldFailure, run_training

__all__ = ["TrainConfig", "ConfigMismatch", "FoldTask", "InjectedInterrupt", "train_fold", "FoldFailure",
           "run_training"]

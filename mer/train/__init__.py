"""Training and evaluation of micro-expression models: LOSO / subject-grouped K-fold / cross-dataset,
honest model selection, resumable run directories, parallel and torchrun fold sharding.

    from mer.train import TrainConfig, run_training
    metrics = run_training(TrainConfig(data="synth", protocol="kfold:5", out="runs/demo"))

Command line (docs/training.md has the options and the measurements behind the defaults):

    mer synth --out data/synth --preset composite --seed 0
    mer train --data data/synth --protocol loso --workers 2 --cache data/cache --out runs/loso   # 68 folds
    mer train --data data/synth --protocol kfold:5 --flow dis --epochs 20 --workers 2 --out runs/demo
    torchrun --nproc_per_node=2 -m mer train --data data/synth --out runs/dist
    mer evaluate runs/loso
    mer predict --checkpoint runs/loso/folds/000-casme2-sub01/model.pt --onset ONSET.jpg --apex APEX.jpg
"""

from mer.train.config import ConfigMismatch, TrainConfig
from mer.train.inputs import channel_stats, normalise, predict_proba
from mer.train.loop import CHECKPOINT_FORMAT, FoldTask, TrainState, train_fold
from mer.train.models import build_model
from mer.train.runner import FoldFailure, run_training

__all__ = [
    "TrainConfig",
    "ConfigMismatch",
    "FoldTask",
    "TrainState",
    "train_fold",
    "FoldFailure",
    "run_training",
    "build_model",
    "channel_stats",
    "normalise",
    "predict_proba",
    "CHECKPOINT_FORMAT",
]

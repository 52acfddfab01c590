"""A few-parameter stand-in model for the training tests, used only while mer.models is unavailable
(importable as ``train_standin:tiny`` because pytest puts this folder on sys.path)."""
from torch import nn


def tiny(width: int = 8, **_):
    """(B, 3, S, S) -> (B, 3) logits, any S."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Dropout(0.1), nn.Linear(4 * width, 3))

"""DDPM data augmentation for micro-expression flow images (u, v, strain), trained per fold without leakage.

Public API::

    from mer.augment import DDPMConfig, augment_fold
    x_gen, y_gen = augment_fold(x_train, y_train, cfg=DDPMConfig(), cache_dir="cache/ddpm",
                                fold_key="composite-sub01", seed=0, ratio="balance")

Building blocks: :mod:`~mer.augment.schedule` (cosine schedule, ``q_sample``), :mod:`~mer.augment.unet`
(``UNet`` denoiser), :mod:`~mer.augment.diffusion` (``GaussianDiffusion``: loss, ancestral and DDIM
samplers), :mod:`~mer.augment.trainer` (``DDPMConfig``, ``train_ddpm``), :mod:`~mer.augment.quality`
(sample-quality report and image grid). See docs/augment.md.
"""

from .diffusion import GaussianDiffusion
from .fold import ChannelScaler, augment_fold, class_targets
from .schedule import cosine_alpha_bar, cosine_betas, q_sample
from .trainer import ArrayBatches, DDPMConfig, train_ddpm
from .unet import UNet

__all__ = [
    "ArrayBatches",
    "ChannelScaler",
    "DDPMConfig",
    "GaussianDiffusion",
    "UNet",
    "augment_fold",
    "class_targets",
    "cosine_alpha_bar",
    "cosine_betas",
    "q_sample",
    "train_ddpm",
]

"""Preprocessing: face crop, onset/apex, optical flow (TV-L1 default), optical strain, facial regions.

    from mer.preprocess import PrepConfig, prepare
    prepared = prepare(samples, PrepConfig(size=28, flow="tvl1"), "cache/", workers=2)
    prepared.face      # (M, 3, S, S) float32: u, v (pixels of the S x S grid), strain (dimensionless)
    prepared.regions   # (M, 3, S, S) float32: [[left eye, right eye], [left mouth corner, right mouth corner]]

Details and measured timings: docs/data.md.
"""

from mer.preprocess.config import PIPELINE_VERSION, PrepConfig
from mer.preprocess.face import FaceNotFoundError, detect_face
from mer.preprocess.flow import compute_flow
from mer.preprocess.pipeline import PreparedSet, PrepError, prepare, prepare_pair, process_sample
from mer.preprocess.strain import optical_strain

__all__ = [
    "PrepConfig",
    "PreparedSet",
    "PrepError",
    "prepare",
    "prepare_pair",
    "process_sample",
    "detect_face",
    "FaceNotFoundError",
    "compute_flow",
    "optical_strain",
    "PIPELINE_VERSION",
]

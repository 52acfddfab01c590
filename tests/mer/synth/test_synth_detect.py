"""The package's default face detector finds the synthetic faces in raw frames (>= 95% of clips)."""

from __future__ import annotations

import cv2
import numpy as np

from mer.preprocess.face import detect_face_how
from mer.synth.config import SynthConfig
from mer.synth.plan import make_plan
from mer.synth.render import ClipRenderer, portrait_for
from mer.synth.writers import encode_frame


def test_detection_rate_on_onset_frames():
    cfg = SynthConfig(difficulty="hard")  # the strongest nuisances
    plans = make_plan(cfg)
    by_subject = {}
    for p in plans:  # one clip per subject: 70 distinct identities (skin tones, glasses, hair, pose)
        by_subject.setdefault((p.dataset, p.subject), p)
    found, total = 0, 0
    for p in list(by_subject.values())[::2]:
        img = ClipRenderer(p, portrait_for(p, cfg.frame_size), color=p.dataset == "casme2").frame(0)
        data = encode_frame(p, img, cfg.level.jpeg_quality)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        box, _ = detect_face_how(decoded)  # what `mer prepare` runs on every onset frame
        total += 1
        if box is not None:
            x, y, w, h = box
            fx, fy = p.pose[0] + cfg.frame_size[0] / 2, p.pose[1] + cfg.frame_size[1] * 0.53
            found += abs(x + w / 2 - fx) < w / 4 and abs(y + h / 2 - fy) < h / 3  # on the face
    assert total >= 30
    assert found / total >= 0.95, f"face found in {found}/{total} clips"

"""``mer predict``: class probabilities for an onset/apex pair (or a clip folder) with a trained model."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mer predict --checkpoint runs/demo/folds/000-casme2-sub01/model.pt --onset onset.jpg --apex apex.jpg
  mer predict --checkpoint runs/demo/folds/000-casme2-sub01 --clip synth/casme2/CASME2_RAW_selected/sub01/EP02_01f
  mer predict --checkpoint runs/demo --clip CLIPDIR --apex-frame img57.jpg   # average of every fold's model
  mer predict --checkpoint MODEL.pt --onset a.png --apex b.png --cropped --json

The preprocessing (face detection, optical flow, strain, regions, size) and the normalisation are the
training run's, read from the checkpoint. A clip folder's frames are ordered by the number in their names:
onset = the first frame, apex = --apex-frame (a file name or a position) or else the middle frame.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predict negative/positive/surprise for an onset/apex pair or a clip folder",
        description="Run a `mer train` checkpoint on new data with the training run's preprocessing and "
        "print class probabilities.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a fold's model.pt, a fold directory, or a run directory (averages all its folds)",
    )
    p.add_argument("--onset", help="onset frame image")
    p.add_argument("--apex", help="apex frame image")
    p.add_argument("--clip", help="clip folder (instead of --onset/--apex)")
    p.add_argument("--apex-frame", help="with --clip: the apex's file name or position (default: middle frame)")
    p.add_argument("--cropped", action="store_true", help="the images are face crops already (no detection)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run(args) -> int:
    import json
    import sys

    from mer.preprocess import FaceNotFoundError
    from mer.train.models import ModelError
    from mer.train.predict import (
        PredictError,
        checkpoint_paths,
        choose_apex,
        clip_frames,
        load_checkpoint,
        predict_pair,
    )

    def fail(msg: str) -> int:
        print(f"mer predict: error: {msg}", file=sys.stderr)
        return 2

    if args.clip and (args.onset or args.apex):
        return fail("give either --clip or --onset and --apex, not both")
    if not args.clip and not (args.onset and args.apex):
        return fail("give --onset IMG --apex IMG, or --clip DIR")
    try:
        if args.clip:
            frames = clip_frames(args.clip)
            onset, apex = frames[0], choose_apex(frames, args.apex_frame)
        else:
            onset, apex = args.onset, args.apex
        models = [load_checkpoint(p) for p in checkpoint_paths(args.checkpoint)]
        probs = predict_pair(models, onset, apex, cropped=args.cropped)
    except (PredictError, ModelError) as e:
        return fail(str(e))
    except FaceNotFoundError as e:
        return fail(f"{e}")
    pred = max(probs, key=probs.get)
    if not all(m.get("valid_estimate", True) for _, m in models):
        print("warning: this model comes from an oracle run (epoch chosen on the held-out subjects)", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "onset": str(onset),
                    "apex": str(apex),
                    "models": len(models),
                    "probabilities": probs,
                    "prediction": pred,
                },
                indent=2,
            )
        )
    else:
        print(f"onset {onset}\napex  {apex}\nmodels: {len(models)}")
        for k, v in probs.items():
            print(f"  {k:<9s} {v:.4f}")
        print(f"prediction: {pred}")
    return 0

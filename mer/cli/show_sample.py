"""``mer show-sample``: a PNG of one sample's preprocessing (onset, apex, flow, strain, regions)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mer show-sample --dataset casme2 --root /data/CASME2 --clip EP02_01f --subject sub01 --out ep02.png
  mer show-sample --dataset smic --root synth/smic --index 0 --out smic0.png --flow dis
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from mer.cli.prepare import add_dataset_args, add_prep_args

    p = subparsers.add_parser(
        "show-sample",
        help="draw one sample's preprocessing to a PNG",
        description="Preprocess one sample (no cache) and draw the onset and apex face crops with the "
        "region boxes, the optical flow as HSV colour (hue = direction, value = magnitude), the optical "
        "strain, and the model inputs (u, v, strain; whole face and regions).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_args(p)
    p.add_argument("--clip", help="clip id (protocol spelling, e.g. EP02_01f, 006_1_2, s01_ne_01, a_175)")
    p.add_argument("--subject", help="subject, when the clip id is ambiguous")
    p.add_argument("--index", type=int, default=0, help="sample index when --clip is not given")
    p.add_argument("--out", required=True, help="PNG path")
    add_prep_args(p)
    return p


def flow_to_hsv(flow, max_mag=None):
    """(H, W, 3) RGB uint8: hue = direction, value = magnitude / max_mag."""
    import cv2
    import numpy as np

    mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
    max_mag = max_mag or float(np.percentile(mag, 99)) or 1.0
    hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / max_mag * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def run(args) -> int:
    """One sample's preprocessing drawn to a PNG; user errors are one ``error:`` line (exit status 2)."""
    from mer.cli.prepare import with_one_line_errors

    return with_one_line_errors(_run, args)


def _run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mer.cli.prepare import load_samples, plain_warnings, prep_config
    from mer.preprocess.face import crop_resize, to_grey
    from mer.preprocess.flow import compute_flow
    from mer.preprocess.pipeline import process_sample, read_image
    from mer.preprocess.regions import REGION_NAMES, resolve_source
    from mer.preprocess.strain import optical_strain

    plain_warnings()
    cfg = prep_config(args)
    args.all_labels = True
    samples = load_samples(args)
    if args.clip:
        pick = [s for s in samples if s.clip == args.clip and (not args.subject or s.subject == args.subject)]
        if len(pick) != 1:
            raise SystemExit(
                f"{len(pick)} samples match clip {args.clip!r}"
                + (f" subject {args.subject!r}" if args.subject else "")
                + "; add --subject"
            )
        s = pick[0]
    else:
        if not 0 <= args.index < len(samples):
            raise SystemExit(f"--index {args.index} out of range (0..{len(samples) - 1})")
        s = samples[args.index]
    face, regions, meta = process_sample(s, cfg, resolve_source(cfg.regions))
    onset = read_image(s.frames[0])
    box = tuple(meta["face_box"])  # the box the pipeline used (onset or apex detection, or the crop)
    on = to_grey(crop_resize(onset, box, cfg.face_size))
    ap = to_grey(crop_resize(read_image(s.frame_path(meta["apex"])), box, cfg.face_size))
    flow = compute_flow(on, ap, cfg.flow)
    strain = optical_strain(flow[..., 0], flow[..., 1])

    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    axes[0, 0].imshow(on, cmap="gray")
    axes[0, 0].set_title(f"onset {s.onset} (face {meta['face_source']})")
    colours = ["tab:red", "tab:orange", "tab:cyan", "tab:green"]
    for (name, b), c in zip(meta["region_boxes"].items(), colours, strict=True):
        axes[0, 0].add_patch(Rectangle((b[0], b[1]), b[2], b[3], fill=False, color=c, lw=1.2, label=name))
    axes[0, 0].legend(fontsize=6, loc="lower left")
    axes[0, 1].imshow(ap, cmap="gray")
    axes[0, 1].set_title(f"apex {meta['apex']}" + (" (estimated)" if s.apex_is_estimated else ""))
    axes[0, 2].imshow(flow_to_hsv(flow))
    mag = (flow**2).sum(-1) ** 0.5
    axes[0, 2].set_title(f"{cfg.flow} flow (max {mag.max():.2f} px @ {cfg.face_size})")
    im = axes[0, 3].imshow(strain, cmap="magma")
    axes[0, 3].set_title("optical strain")
    fig.colorbar(im, ax=axes[0, 3], fraction=0.046)
    for j, (ch, name) in enumerate(zip(range(3), ["u (px @ S)", "v (px @ S)", "strain"], strict=True)):
        im = axes[1, j].imshow(face[ch], cmap="coolwarm" if ch < 2 else "magma")
        axes[1, j].set_title(f"input face: {name}")
        fig.colorbar(im, ax=axes[1, j], fraction=0.046)
    axes[1, 3].imshow(flow_to_hsv(regions[:2].transpose(1, 2, 0)))
    axes[1, 3].set_title(
        "regions "
        + "/".join(n.replace("_", " ") for n in REGION_NAMES[:2])
        + "\n"
        + "/".join(n.replace("_", " ") for n in REGION_NAMES[2:]),
        fontsize=8,
    )
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    lab = "none" if s.label is None else ["negative", "positive", "surprise"][s.label]
    fig.suptitle(f"{s.uid}  emotion {s.emotion!r} label {lab}  regions {meta['region_source']}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0

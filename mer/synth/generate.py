"""Writing a whole synthetic dataset: plan, render in worker processes, annotations, list, sidecars."""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mer.synth.config import SynthConfig
from mer.synth.plan import ClipPlan, list_rows, make_plan
from mer.synth.writers import (
    CASME2_XLSX,
    LIST_NAME,
    SAMM_XLSX,
    TRUTH_NAME,
    clip_folder,
    encode_frame,
    frame_name,
    write_casme2_xlsx,
    write_json,
    write_list,
    write_samm_xlsx,
    write_truth,
)

OUTPUTS = ("casme2", "samm", "smic", LIST_NAME, "synth_config.json")


@dataclass
class Summary:
    """What :func:`generate` wrote."""

    out: Path
    clips: int
    frames: int
    bytes: int
    seconds: float
    per_dataset: dict[str, int]

    def __str__(self) -> str:
        ds = ", ".join(f"{k} {v}" for k, v in self.per_dataset.items())
        return (
            f"wrote {self.clips} clips ({ds}), {self.frames} frames, {self.bytes / 1e6:.1f} MB "
            f"to {self.out} in {self.seconds:.1f} s"
        )


def _render_subject(args) -> tuple[int, int]:
    """Worker: render and write every clip of one subject. Returns (frames, bytes)."""
    cfg, out, plans = args
    import cv2

    from mer.synth.render import ClipRenderer, portrait_for

    cv2.setNumThreads(1)
    lvl = cfg.level
    portrait = portrait_for(plans[0], cfg.frame_size)
    n_frames = n_bytes = 0
    for p in plans:
        color = p.dataset == "casme2" or (p.dataset == "smic" and cfg.smic_color)
        folder = clip_folder(out, p)
        folder.mkdir(parents=True, exist_ok=True)
        for number, img in ClipRenderer(p, portrait, color=color).frames():
            data = encode_frame(p, img, lvl.jpeg_quality)
            (folder / frame_name(p, number)).write_bytes(data)
            n_frames += 1
            n_bytes += len(data)
    return n_frames, n_bytes


def _check_out(out: Path, overwrite: bool) -> None:
    present = [n for n in OUTPUTS if (out / n).exists()]
    if present and not overwrite:
        raise FileExistsError(
            f"{out} already holds generated data ({', '.join(present)}); pass "
            "overwrite=True (CLI: --overwrite) to replace it, or choose another --out"
        )
    for n in present:
        path = out / n
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def generate(
    cfg: SynthConfig, out: str | os.PathLike, *, workers: int = 0, overwrite: bool = False, progress: bool = True
) -> Summary:
    """Write the dataset of ``cfg`` under ``out`` (created if needed).

    out/casme2, out/samm, out/smic: the three datasets in their native layouts; out/megc2019_composite.csv:
    the sample list; out/<dataset>/synth_truth.csv: ground truth; out/synth_config.json: the resolved
    config (written last: its presence marks a complete dataset).
    workers: worker processes (0 or 1: render in this process). The output does not depend on it.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_out(out, overwrite)
    plans = make_plan(cfg)
    by_subject: dict[tuple[str, str], list[ClipPlan]] = defaultdict(list)
    for p in plans:
        by_subject[(p.dataset, p.subject)].append(p)
    tasks = [(cfg, out, clips) for _, clips in sorted(by_subject.items())]
    tasks.sort(key=lambda t: -sum(p.n_frames for p in t[2]))  # biggest first: better load balance
    total = sum(p.n_frames for p in plans)
    from tqdm import tqdm

    n_frames = n_bytes = 0
    with tqdm(total=total, unit="frame", desc=f"mer synth {cfg.preset}", disable=not progress) as bar:
        if workers and workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for f, b in pool.imap_unordered(_render_subject, tasks):
                    n_frames, n_bytes = n_frames + f, n_bytes + b
                    bar.update(f)
        else:
            for t in tasks:
                f, b = _render_subject(t)
                n_frames, n_bytes = n_frames + f, n_bytes + b
                bar.update(f)
    per = {ds: [p for p in plans if p.dataset == ds] for ds in ("casme2", "samm", "smic")}
    write_casme2_xlsx(out / "casme2" / CASME2_XLSX, per["casme2"])
    write_samm_xlsx(out / "samm" / SAMM_XLSX, per["samm"])
    for ds, ps in per.items():
        write_truth(out / ds / TRUTH_NAME, ps)
    write_list(out / LIST_NAME, list_rows(plans))
    seconds = time.perf_counter() - t0
    write_json(out / "synth_config.json", cfg.to_dict())
    return Summary(
        out=out,
        clips=len(plans),
        frames=n_frames,
        bytes=n_bytes,
        seconds=seconds,
        per_dataset={ds: len(ps) for ds, ps in per.items()},
    )

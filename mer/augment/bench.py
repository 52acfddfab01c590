"""Time the DDPM's pieces on this machine: ``python -m mer.augment.bench [--threads 1 2] [--size 28]``.

Prints, per thread count, the median wall and CPU time of one training step (batch ``cfg.batch_size``)
and of one DDIM step over ``--n-gen`` images, the predicted time per fold at the default config
(``train_steps`` × step + ``sample_steps`` × sampling step), and the load average (the machine is shared:
compare CPU and wall time). Random inputs, no data needed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from .trainer import DDPMConfig, build_diffusion


def _median_time(fn, reps: int) -> tuple[float, float]:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    walls.sort(), cpus.sort()
    return walls[len(walls) // 2], cpus[len(cpus) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mer.augment.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--size", type=int, default=28, help="image height = width")
    p.add_argument("--n-gen", type=int, default=308, help="images generated per fold (balance of 250/109/83)")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    cfg = DDPMConfig(progress=False)
    rows = []
    for th in args.threads:
        torch.set_num_threads(th)
        torch.manual_seed(0)
        d = build_diffusion(cfg, 3)
        opt = torch.optim.Adam(d.parameters(), lr=cfg.lr)
        x = torch.randn(cfg.batch_size, 3, args.size, args.size)
        y = torch.randint(0, 3, (cfg.batch_size,))

        def train_step():
            loss = d.loss(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        xs = torch.randn(args.n_gen, 3, args.size, args.size)
        ys = torch.randint(0, 3, (args.n_gen,))
        ts = torch.full((args.n_gen,), 500)

        def sample_step():
            with torch.no_grad():
                d.model_eps(xs, ts, ys)

        tw, tc = _median_time(train_step, args.reps)
        sw, sc = _median_time(sample_step, args.reps)
        rows.append(
            {
                "threads": th,
                "train_step_wall_s": tw,
                "train_step_cpu_s": tc,
                "sample_step_wall_s": sw,
                "sample_step_cpu_s": sc,
                "fold_wall_s_predicted": cfg.train_steps * tw + cfg.sample_steps * sw,
                "fold_cpu_s_predicted": cfg.train_steps * tc + cfg.sample_steps * sc,
                "load_avg_1min": os.getloadavg()[0],
            }
        )
    print(
        json.dumps(
            {
                "size": args.size,
                "batch_size": cfg.batch_size,
                "train_steps": cfg.train_steps,
                "sample_steps": cfg.sample_steps,
                "n_gen": args.n_gen,
                "results": rows,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

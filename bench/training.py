"""Seconds per iteration of the dual-network SSL step against a plain two-network supervised step.

Both use the same nets, patch and labeled batch; the SSL step adds the unlabeled batch and every loss
term (CPS + KL weighting, entropy filter, cosine, prototype contrast, confident-disagreement term). The
difference is the cost of the semi-supervised method.

    python bench/training.py                          # paper patch (la_10pct) and the tiny preset, CPU
    python bench/training.py --presets tiny --iterations 10 --record
    python bench/training.py --device cuda --record
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PeakMemory, append  # noqa: E402

ALL_OFF = {"supervised_cr": False, "cps_kl": False, "entropy_filter": False, "cosine": False,
           "prototype": False}


def seconds_per_iteration(config, device: torch.device, ssl: bool, iterations: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    from models.training.api import build_networks
    from models.training.trainer import Trainer

    rng = np.random.default_rng(0)
    shape = tuple(int(s) + 8 for s in config.patch_size)
    labeled = [(rng.normal(size=shape).astype(np.float32), (rng.random(shape) > 0.7).astype(np.uint8))
               for _ in range(2)]
    unlabeled = [rng.normal(size=shape).astype(np.float32) for _ in range(2)] if ssl else []
    cfg = config.with_overrides({"iterations": iterations + 1, "checkpoint_every": 10**9, "log_every": 10**9,
                                 **({} if ssl else {"modules": ALL_OFF})})
    torch.manual_seed(0)
    net_a, net_b = build_networks(cfg)
    times: list[float] = []

    class Timer:
        last = time.perf_counter()

        def on_iteration(self, trainer, it, losses):  # type: ignore[no-untyped-def]
            now = time.perf_counter()
            if it > 1:  # the first iteration includes one-off set-up
                times.append(now - Timer.last)
            Timer.last = now

    with PeakMemory(str(device)) as mem:
        Trainer(cfg, net_a, net_b, labeled, unlabeled, device, None, [Timer()]).train()
    return float(np.median(times)), mem.peak


def main() -> None:
    from models.training.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="la_10pct,tiny")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per variant (median)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    lines = ["| preset | patch | batch | supervised s/it | SSL s/it | SSL / supervised | peak MB SSL |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for preset in args.presets.split(","):
        config = load_config(preset)
        sup, _ = seconds_per_iteration(config, device, ssl=False, iterations=args.iterations)
        ssl, peak = seconds_per_iteration(config, device, ssl=True, iterations=args.iterations)
        patch = "×".join(str(p) for p in config.patch_size)
        row = (f"| {preset} | {patch} | {config.batch_labeled}+{config.batch_unlabeled} "
               f"| {sup:.2f} | {ssl:.2f} | {ssl / sup:.2f} | {peak / 2**20:.0f} |")
        print(row, flush=True)
        lines.append(row)
    table = (f"amp as each preset says; device {device}; median of {args.iterations} iterations\n\n"
             + "\n".join(lines))
    print(table)
    if args.record:
        append("Training: SSL step vs supervised step", table, args.device)


if __name__ == "__main__":
    main()

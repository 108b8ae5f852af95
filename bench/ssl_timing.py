"""Time the first iterations of the benchmark's full method on a prepared phantom set (for gpu_ssl.sh).

Loads the arrays that ``bench/ssl_seeds.py --prepare-only`` wrote for ``--data-seed`` (under
``--data-root``), builds the ``full`` variant's config (``configs/phantoms_ssl.yaml`` at ``--width`` and
``--patch``; every term is computed at every iteration, the warm-up only weights them 0), trains
``--iterations`` iterations on ``--device`` and prints one JSON line: ``seconds_per_iteration`` (the wall
time of all those iterations, first ones included, divided by their number), ``iterations``, ``device``.
Several copies started at once measure the rate when that many trainings share the device.

    .venv/bin/python bench/ssl_timing.py --data-root var/bench/ssl_data --data-seed 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ssl_phantoms import base_config, variant_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--data-seed", type=int, required=True)
    p.add_argument("--cases", type=int, default=40)
    p.add_argument("--test-cases", type=int, default=16)
    p.add_argument("--labeled-fraction", type=float, default=0.1)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 32])
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)

    import torch

    from models.training import Trainer, build_networks, split_labeled

    torch.set_num_threads(args.threads)
    n_lab = max(1, round(args.labeled_fraction * args.cases))
    ns = argparse.Namespace(iterations=args.iterations, seed=args.seed, patch=args.patch, width=args.width,
                          set=[])
    cfg, _, _ = variant_config(base_config(ns, n_lab), "full")
    data_dir = Path(args.data_root) / f"phantoms_{args.cases}+{args.test_cases}_s{args.data_seed}"
    prep = next(data_dir.glob("prepared_*mm.pkl"))
    with open(prep, "rb") as fh:
        arrays = pickle.load(fh)
    labeled, unlabeled = split_labeled(arrays["labeled"], arrays["unlabeled"], n_lab)
    device = torch.device(args.device)
    torch.manual_seed(cfg.seed)
    net_a, net_b = build_networks(cfg)
    trainer = Trainer(cfg, net_a, net_b, labeled, unlabeled, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for it in range(args.iterations):
        trainer.train_step(it)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds_per_iteration": seconds / max(args.iterations, 1),
                      "iterations": args.iterations, "device": str(device)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

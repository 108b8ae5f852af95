"""Dual-network sliding-window inference + entropy: the dualseg predictor against a MONAI baseline.

Baseline: ``monai.inferers.sliding_window_inference`` run once per net (same roi, overlap, gaussian
blending and window batch), the two softmax maps averaged and the entropy taken — what one would write
with MONAI alone, on the package's plain eval-mode nets (BatchNorm not folded, no graph rewriting).
dualseg: ``Predictor.model_probabilities`` (both nets on the same batched windows, cached gaussian map,
preallocated accumulators, BatchNorm folded and, on a CPU in float32, the nets run as oneDNN graphs:
channels-last, prepacked weights, ReLU and residual sums fused into the convolutions — see
models/inference/onednn.py) + the same entropy. Both run in this process, alternating, on the same
input, with the same torch thread count; the ratio is baseline seconds / dualseg seconds.

    python bench/inference.py                          # CPU, full-size nets, 128×128×96 and 256×256×96
    python bench/inference.py --sizes 128x128x96 --record
    python bench/inference.py --onednn off             # dualseg without the oneDNN graphs (plain modules)
    python bench/inference.py --device cuda --amp --record
    python bench/inference.py --starter                # the shipped starter model instead

To see what a CPU without AVX-512 would do on a machine that has it, run with
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2`` (both sides obey them).
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


def full_size_package(tmp: Path, patch: tuple[int, int, int], seed: int = 0) -> Path:
    from models.networks import build_network
    from models.package import ModelCard, save_package

    torch.manual_seed(seed)
    nets = [build_network(n, in_channels=1, num_classes=2, width=16) for n in ("resnet_vnet", "vnet")]
    code = {"code": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}
    classes = [
        {"index": i, "name": n, "category": code, "type": code, "color": [i * 200, 0, 0]}
        for i, n in enumerate(("background", "foreground"))
    ]
    card = ModelCard(
        name="bench-full",
        version="bench-full-1",
        architecture={
            "in_channels": 1,
            "num_classes": 2,
            "net_a": {"name": "resnet_vnet", "width": 16},
            "net_b": {"name": "vnet", "width": 16},
        },
        classes=classes,
        preprocessing={"spacing": [1.0, 1.0, 1.0], "orientation": "RAS", "intensity": {"mode": "zscore"}},
        patch_size=list(patch),
        training={"note": "random weights (benchmark)"},
        metrics={},
        parent_version=None,
    )
    return save_package(tmp / "bench-full", nets[0], nets[1], card)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    k = probs.shape[1]
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(1) / np.log(k)


def baseline(package, image: torch.Tensor, patch, overlap: float, batch: int, amp) -> torch.Tensor:  # type: ignore[no-untyped-def]
    from monai.inferers import sliding_window_inference

    probs: list[torch.Tensor] = []
    for net in (package.net_a, package.net_b):

        def run(x: torch.Tensor, net=net) -> torch.Tensor:  # type: ignore[no-untyped-def]
            with torch.autocast(image.device.type, dtype=amp, enabled=amp is not None):
                return torch.softmax(net(x)[0].float(), dim=1)

        out = sliding_window_inference(image, patch, batch, run, overlap=overlap, mode="gaussian")
        assert isinstance(out, torch.Tensor)  # one output per call here
        probs.append(out)
    mean = (probs[0] + probs[1]) / 2
    return entropy(mean)


def window_count(shape, patch, overlap: float) -> int:  # type: ignore[no-untyped-def]
    from models.inference.sliding import window_starts

    return len(window_starts(shape, patch, overlap))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128x128x96,256x256x96")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=1, help="windows per forward pass (both methods)")
    ap.add_argument("--patch", default="112x112x80")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--amp", action="store_true", help="bf16/fp16 autocast (both methods)")
    ap.add_argument("--starter", action="store_true", help="use the shipped starter model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument(
        "--onednn",
        choices=("auto", "on", "off"),
        default="auto",
        help="dualseg's oneDNN graphs (Predictor(onednn=...)): auto = where they apply",
    )
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    from models.inference.predictor import Predictor
    from models.package import load_package
    from models.runtime import resolve_amp

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench-inf-"))
    if args.starter:
        from backend.services.registry import starter_package_path

        path = starter_package_path()
        assert path is not None, "no starter package shipped"
    else:
        d, h, w = (int(v) for v in args.patch.split("x"))
        path = full_size_package(tmp, (d, h, w))
    package = load_package(path, device)
    onednn = {"auto": None, "on": True, "off": False}[args.onednn]
    predictor = Predictor(
        package, device, overlap=args.overlap, batch_size=args.batch, amp=args.amp, onednn=onednn
    )
    amp = resolve_amp(args.amp, device)
    patch = predictor.patch_size
    rows = []
    for size in args.sizes.split(","):
        shape = tuple(int(v) for v in size.split("x"))
        image = torch.randn(1, 1, *shape, device=device)
        n = window_count(shape, patch, args.overlap)
        best = {"baseline": float("inf"), "dualseg": float("inf")}
        peak = {"baseline": 0, "dualseg": 0}
        with torch.inference_mode():
            for r in range(args.repeat + 1):  # the first round warms up (not timed unless repeat == 0)
                for name in ("baseline", "dualseg"):
                    with PeakMemory(args.device) as mem:
                        t0 = time.perf_counter()
                        if name == "baseline":
                            ent = baseline(package, image, patch, args.overlap, args.batch, amp)
                        else:
                            ent = entropy(predictor.model_probabilities(image[0])[None])
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        dt = time.perf_counter() - t0
                    if r > 0 or args.repeat == 0:
                        best[name] = min(best[name], dt)
                    peak[name] = max(peak[name], mem.peak)
                    del ent
        ratio = best["baseline"] / best["dualseg"]
        rows.append((size, n, best, peak, ratio))
        print(
            f"{size}: {n} windows; baseline {best['baseline']:.2f} s, dualseg {best['dualseg']:.2f} s, "
            f"ratio {ratio:.2f}",
            flush=True,
        )
    model = "starter model" if args.starter else f"full-size nets (random weights), patch {args.patch}"
    nets = "oneDNN graphs" if predictor.onednn else "plain modules"
    cpu = f"CPU capability {torch.backends.cpu.get_cpu_capability()}, " if device.type == "cpu" else ""
    lines = [
        f"{model}; overlap {args.overlap}; window batch {args.batch}; amp {amp}; device {device}; "
        f"{cpu}torch threads {torch.get_num_threads()} (both sides); dualseg nets: {nets} (BatchNorm "
        f"folded); best of {max(args.repeat, 1)} after a warm-up",
        "",
        "| volume | windows | MONAI per-net s | dualseg s | windows/s (dualseg, per net) | peak MB MONAI | "
        "peak MB dualseg | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, n, best, peak, ratio in rows:
        lines.append(
            f"| {size} | {n} | {best['baseline']:.2f} | {best['dualseg']:.2f} | {n / best['dualseg']:.2f} | "
            f"{peak['baseline'] / 2**20:.0f} | {peak['dualseg'] / 2**20:.0f} | ratio {ratio:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.record:
        append("Inference: dualseg predictor vs MONAI per-net baseline", table, args.device)


if __name__ == "__main__":
    main()

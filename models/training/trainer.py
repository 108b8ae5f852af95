"""Dual-network semi-supervised trainer (hooks, AMP, resumable checkpoints, optional DDP).

One iteration: the sampler draws ``B_l`` labeled + ``B_u`` unlabeled crops; both nets run on the same
batch under autocast; :class:`~models.losses.DualNetLoss` (float32) gives the total and its terms;
one backward; one SGD step per net. The learning rate follows ``config.lr_schedule``.

Files in ``out_dir`` (rank 0 only): ``checkpoint.pt`` (written atomically every ``checkpoint_every``
iterations, on stop and at the end) and ``train_log.jsonl`` (one JSON object every ``log_every``
iterations and at the last one: ``iteration``, ``lr``, every loss term, ``seconds`` for that iteration,
``elapsed``). The checkpoint holds only tensors and plain containers (weights, optimizer and scaler
state, iteration, the config as a dict, RNG states of torch, CUDA, the sampler and the loss), so it
loads with ``torch.load(weights_only=True)``. :meth:`Trainer.resume` restores it and continues; a
resumed run equals an uninterrupted one (tested on CPU, where the kernels are deterministic).

Determinism: the trainer seeds torch's global RNG with ``config.seed + rank`` (dropout draws from it)
and gives the sampler and the prototype subsampling their own generators.

AMP (``config.amp``, :func:`models.runtime.resolve_amp` with ``training=True``): ``off``; ``bf16`` autocast
(no scaler); ``fp16`` autocast with a ``GradScaler`` (CUDA only); ``auto`` = bf16 on CUDA when supported
else fp16, bf16 on CPUs with native bf16, else off.

Distributed (torchrun): when ``torch.distributed`` is initialised before the trainer is built, both nets
are wrapped in ``DistributedDataParallel`` (``device_ids=[device.index]`` on CUDA), each rank samples
with seed ``config.seed + rank`` (the global batch is ``world_size × (B_l + B_u)``), a stop request on
any rank stops all ranks, and only rank 0 writes files and calls hooks. Use one process per GPU and pass
``device = torch.device("cuda", local_rank)``. BatchNorm statistics stay per-rank (convert with
``nn.SyncBatchNorm.convert_sync_batchnorm`` before building the trainer if wanted). Only the
single-process path is covered by the tests.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.data.augment import build_augment
from models.losses.combined import DualNetLoss
from models.networks.registry import count_parameters
from models.runtime import resolve_amp
from models.training.config import TrainConfig
from models.training.hooks import TrainerHook
from models.training.sampler import TwoStreamSampler

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"


def split_labeled(
    labeled: Sequence[tuple[np.ndarray, np.ndarray]], unlabeled: Sequence[np.ndarray], num_labeled: int | None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """Keep the first ``num_labeled`` labeled cases; the images of the rest join the unlabeled pool."""
    if num_labeled is None or num_labeled >= len(labeled):
        return list(labeled), list(unlabeled)
    return list(labeled[:num_labeled]), [img for img, _ in labeled[num_labeled:]] + list(unlabeled)


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, DistributedDataParallel) else net


class Trainer:
    """Trains Net A and Net B together; see the module docstring.

    Args:
        config: the run's :class:`TrainConfig`.
        net_a, net_b: networks mapping ``(B, C, *patch)`` to ``(logits (B, K, *patch), features)``.
        labeled: preprocessed ``(image (X, Y, Z) float32, label (X, Y, Z) uint8)`` pairs.
        unlabeled: preprocessed images ``(X, Y, Z)``. If empty, the run is supervised only.
        device: where the nets run (injected; nothing here calls ``.cuda()``).
        out_dir: folder for ``checkpoint.pt`` and ``train_log.jsonl``; ``None`` writes nothing.
        hooks: :class:`TrainerHook` subclasses or any objects with some of its methods.
        stop_requested: polled before every iteration; returning True stops after a checkpoint.
    """

    def __init__(
        self,
        config: TrainConfig,
        net_a: nn.Module,
        net_b: nn.Module,
        labeled: Sequence[tuple[np.ndarray, np.ndarray]],
        unlabeled: Sequence[np.ndarray],
        device: torch.device,
        out_dir: Path | None = None,
        hooks: Sequence[TrainerHook | object] = (),
        stop_requested: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.hooks = list(hooks)
        self.stop_requested = stop_requested
        self._stop_flag = False
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.is_main = self.rank == 0
        torch.manual_seed(config.seed + self.rank)

        lab, unl = split_labeled(labeled, unlabeled, config.num_labeled)
        if not lab:
            raise ValueError("training needs at least one labeled case")
        self.num_labeled, self.num_unlabeled = len(lab), len(unl)
        self.sampler = TwoStreamSampler(
            lab, unl, config.patch_size, config.batch_labeled, config.batch_unlabeled if unl else 0,
            seed=config.seed + self.rank, foreground_prob=config.sampler.foreground_prob,
            flip=config.sampler.flip, augment=build_augment(config.augment),
        )
        self.loss_generator = torch.Generator().manual_seed(config.seed + 10_000 + self.rank)
        self.loss_fn = DualNetLoss(config.loss, config.modules, config.num_classes, config.iterations)

        self.net_a = net_a.to(self.device).train()
        self.net_b = net_b.to(self.device).train()
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net_a = DistributedDataParallel(self.net_a, device_ids=ids)
            self.net_b = DistributedDataParallel(self.net_b, device_ids=ids)
        opt = config.optimizer
        self.optimizers = [
            torch.optim.SGD(net.parameters(), lr=opt.lr, momentum=opt.momentum,
                            weight_decay=opt.weight_decay, nesterov=opt.nesterov)
            for net in (self.net_a, self.net_b)
        ]
        self.amp_dtype = resolve_amp(config.amp, self.device, training=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.iteration = 0
        self.elapsed = 0.0
        self.current_lr = opt.lr
        self.last_losses: dict[str, float] = {}

    # ------------------------------------------------------------------ public API

    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir / "checkpoint.pt"`` (``None`` without ``out_dir``)."""
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    def request_stop(self) -> None:
        """Ask the loop to stop (checkpoint, then return) before the next iteration."""
        self._stop_flag = True

    def lr_at(self, iteration: int) -> float:
        """Learning rate used for the 0-based ``iteration``."""
        s, base = self.config.lr_schedule, self.config.optimizer.lr
        if s.kind == "step":
            return base * s.gamma ** sum(iteration >= step for step in s.steps)
        if s.kind == "poly":
            return base * max(1.0 - iteration / max(self.config.iterations, 1), 0.0) ** s.power
        return base

    def train_step(self, iteration: int) -> dict[str, float]:
        """One optimisation step at the 0-based ``iteration``; returns the loss terms."""
        lr = self.lr_at(iteration)
        self.current_lr = lr
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        images, labels = self.sampler.sample()
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out_a = self.net_a(images)
            out_b = self.net_b(images)
        total, terms = self.loss_fn(out_a, out_b, labels, iteration, self.loss_generator)
        if not math.isfinite(terms["total"]):
            raise FloatingPointError(f"non-finite loss at iteration {iteration + 1}: {terms}")
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        return terms

    def train(self) -> dict[str, Any]:
        """Run from ``self.iteration`` to ``config.iterations``; returns the summary (see :meth:`summary`)."""
        cfg = self.config
        stopped = False
        while self.iteration < cfg.iterations:
            if self._should_stop():
                stopped = True
                break
            t0 = time.perf_counter()
            terms = self.train_step(self.iteration)
            self.iteration += 1
            seconds = time.perf_counter() - t0
            self.elapsed += seconds
            self.last_losses = terms
            it = self.iteration
            if self.is_main:
                if it % cfg.log_every == 0 or it == cfg.iterations:
                    self._log({"iteration": it, "lr": self.current_lr, **terms, "seconds": seconds,
                               "elapsed": self.elapsed})
                self._call_hooks("on_iteration", it, terms)
            if cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and it < cfg.iterations:
                self.save_checkpoint()
        self.save_checkpoint()
        summary = self.summary(stopped)
        if self.is_main:
            self._call_hooks("on_end", summary)
        return summary

    def resume(self, out_dir: Path | None = None) -> dict[str, Any]:
        """Load ``checkpoint.pt`` from ``out_dir`` (default: this trainer's) and continue training."""
        directory = Path(out_dir) if out_dir is not None else self.out_dir
        if directory is None:
            raise ValueError("resume needs an out_dir")
        self.load_checkpoint(directory / CHECKPOINT_NAME)
        if self.out_dir is None:
            self.out_dir = directory
        return self.train()

    def summary(self, stopped: bool = False) -> dict[str, Any]:
        """Plain-data summary of the run (counts, iterations, final losses, timing, parameters)."""
        path = self.checkpoint_path
        return {
            "iterations": self.iteration,
            "target_iterations": self.config.iterations,
            "stopped": stopped,
            "seconds": self.elapsed,
            "final_losses": dict(self.last_losses),
            "num_labeled": self.num_labeled,
            "num_unlabeled": self.num_unlabeled,
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "device": str(self.device),
            "checkpoint": str(path) if path is not None and path.exists() else None,
            "parameters": {"net_a": count_parameters(_unwrap(self.net_a)),
                           "net_b": count_parameters(_unwrap(self.net_b))},
            "config": self.config.to_dict(),
        }

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain containers only)."""
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "sampler": self.sampler.state_dict()["generator"],
            "loss": self.loss_generator.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format_version": 1,
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "net_a": _unwrap(self.net_a).state_dict(),
            "net_b": _unwrap(self.net_b).state_dict(),
            "optimizer_a": self.optimizers[0].state_dict(),
            "optimizer_b": self.optimizers[1].state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.config.to_dict(),
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (as loaded from ``checkpoint.pt``)."""
        _unwrap(self.net_a).load_state_dict(state["net_a"])
        _unwrap(self.net_b).load_state_dict(state["net_b"])
        self.optimizers[0].load_state_dict(state["optimizer_a"])
        self.optimizers[1].load_state_dict(state["optimizer_b"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.elapsed = float(state.get("elapsed", 0.0))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.sampler.load_state_dict({"generator": rng["sampler"]})
        self.loss_generator.set_state(rng["loss"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint.pt`` atomically (rank 0, with an ``out_dir``); returns its path."""
        path = self.checkpoint_path
        if path is None or not self.is_main:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        self._call_hooks("on_checkpoint", path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Load ``path`` (``weights_only=True``) and drop log lines written after it."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(state)
        self._truncate_log(Path(path).parent / LOG_NAME)

    # ------------------------------------------------------------------ internals

    def _call_hooks(self, event: str, *args: Any) -> None:
        """Call ``hook.<event>(self, *args)`` on every hook that defines it (duck-typed hooks are fine)."""
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                method(self, *args)

    def _should_stop(self) -> bool:
        stop = self._stop_flag or bool(self.stop_requested is not None and self.stop_requested())
        if self.distributed:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        return stop

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self, log: Path) -> None:
        if not log.is_file() or not self.is_main:
            return
        kept = [line for line in log.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= self.iteration]
        log.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

"""High-level entry point: build both networks from a config and train them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.networks.registry import build_network
from models.training.config import TrainConfig
from models.training.hooks import TrainerHook
from models.training.trainer import CHECKPOINT_NAME, Trainer


def build_networks(config: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """``(net_a, net_b)`` as the config describes (freshly initialised, on the CPU)."""
    nets = []
    for spec in (config.networks.net_a, config.networks.net_b):
        nets.append(build_network(spec.name, in_channels=config.in_channels,
                                  num_classes=config.num_classes, width=spec.width, dropout=spec.dropout))
    return nets[0], nets[1]


def train_dual(
    config: TrainConfig,
    labeled: Sequence[tuple[np.ndarray, np.ndarray]],
    unlabeled: Sequence[np.ndarray],
    device: torch.device,
    out_dir: Path | None = None,
    hooks: Sequence[TrainerHook | object] = (),
    stop_requested: Callable[[], bool] | None = None,
    resume: bool = False,
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """Build Net A and Net B (seeded with ``config.seed``), train them, return them in eval mode.

    With ``resume=True`` and an existing ``out_dir/checkpoint.pt`` training continues from it.
    Returns ``(net_a, net_b, summary)``; see :meth:`Trainer.summary` for the summary's keys.
    """
    torch.manual_seed(config.seed)
    net_a, net_b = build_networks(config)
    trainer = Trainer(config, net_a, net_b, labeled, unlabeled, device, out_dir, hooks, stop_requested)
    if resume and out_dir is not None and (Path(out_dir) / CHECKPOINT_NAME).is_file():
        summary = trainer.resume()
    else:
        summary = trainer.train()
    return net_a.eval(), net_b.eval(), summary

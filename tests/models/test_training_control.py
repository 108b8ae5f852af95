"""The control run (every unlabeled weight 0) forwards the unlabeled crops; old configs still load."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from models.losses import LossConfig
from models.training import TrainConfig, Trainer, build_networks, configs_dir, load_config

ROOT = Path(__file__).resolve().parents[2]
STARTER = ROOT / "models" / "assets" / "starter"


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros((24, 24, 20), np.uint8)
    label[6:14, 6:14, 4:12] = 1
    return (rng.normal(size=label.shape) + 2.0 * label).astype(np.float32), label


def _one_step(cfg: TrainConfig, unlabeled: list[np.ndarray]) -> tuple[Trainer, list[int], dict[str, float]]:
    labeled = [_case(i) for i in range(2)]
    torch.manual_seed(cfg.seed)
    net_a, net_b = build_networks(cfg)
    sizes: list[int] = []
    net_a.register_forward_hook(lambda _m, inputs, _out: sizes.append(int(inputs[0].shape[0])))
    trainer = Trainer(cfg, net_a, net_b, labeled, unlabeled, torch.device("cpu"))
    terms = trainer.train_step(0)
    return trainer, sizes, terms


def _bn_means(net: nn.Module) -> torch.Tensor:
    return torch.cat([m.running_mean.clone() for m in net.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None])


def test_control_forwards_unlabeled_crops_with_zero_unlabeled_weight() -> None:
    base = load_config("tiny").with_overrides({"patch_size": [16, 16, 16], "iterations": 10})
    control_cfg = base.with_overrides({"loss.w_u": 0.0, "loss.lambda_c": 0.0})
    unlabeled = [_case(100 + i)[0] for i in range(2)]
    control, sizes, terms = _one_step(control_cfg, unlabeled)
    assert sizes == [base.batch_labeled + base.batch_unlabeled]  # 2 labeled + 2 unlabeled crops
    assert terms["w_u"] == 0.0 and terms["lambda_c"] == 0.0
    assert terms["cps_a"] > 0 and terms["contrast_a"] > 0  # computed and logged, weighted 0
    assert terms["total"] == pytest.approx(terms["supervised"], rel=1e-6)
    supervised, sup_sizes, _ = _one_step(control_cfg, [])
    assert sup_sizes == [base.batch_labeled]
    # Same seed and labeled crops: BatchNorm saw different batches, so its running statistics differ.
    assert not torch.allclose(_bn_means(control.net_a), _bn_means(supervised.net_a))
    assert not torch.allclose(_bn_means(control.net_b), _bn_means(supervised.net_b))


def test_starter_card_config_loads_with_defaults_for_new_fields() -> None:
    card = json.loads((STARTER / "model.json").read_text())
    old = card["training"]["config"]
    assert "cr_target" not in old["loss"] and "teacher" not in old["loss"]  # written before issue 16
    cfg = TrainConfig.from_dict(old)
    assert cfg.loss.cr_target == "label" and cfg.loss.teacher == "symmetric"
    assert cfg.loss.classwise_q and not cfg.loss.dice_background
    assert cfg.loss.w_u_rampup == old["loss"]["w_u_rampup"] and cfg.modules.supervised_cr is False
    from models.package import load_package

    package = load_package(STARTER, torch.device("cpu"))
    assert package.card.version == card["version"]
    with torch.no_grad():
        logits, _ = package.net_a(torch.zeros(1, 1, 48, 48, 32))
    assert logits.shape == (1, 2, 48, 48, 32) and bool(torch.isfinite(logits).all())


def test_presets_say_where_they_differ_from_the_paper() -> None:
    for name in ("la_10pct", "pancreas_10pct", "brats", "phantoms_ssl", "starter"):
        text = (configs_dir() / f"{name}.yaml").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith("# differs from the paper:")]
        assert len(lines) >= 4, name
    ssl = (configs_dir() / "phantoms_ssl.yaml").read_text()
    for option in ("loss.pseudo_dice", "loss.balanced_pseudo"):
        assert re.search(rf"^# differs from the paper: {re.escape(option)}", ssl, re.M), option
    assert "normalised by the few masked voxels" not in (configs_dir() / "starter.yaml").read_text()


@pytest.mark.parametrize("name", ["la_10pct", "pancreas_10pct", "brats"])
def test_paper_presets_use_the_methods_terms_and_schedule(name: str) -> None:
    loss: Any = load_config(name).loss
    assert (loss.cr_target, loss.dice_background, loss.classwise_q, loss.teacher) == (
        "label", False, True, "symmetric")
    assert (loss.w_u, loss.w_u_rampup, loss.lambda_c, loss.lambda_c_rampup) == (1.0, 0, 0.1, 6000)
    assert loss == LossConfig(lambda_c_rampup=6000)

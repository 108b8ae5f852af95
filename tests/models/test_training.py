"""Training: config loading/overrides, sampler, tiny runs, resume, ablation switches, AMP."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.training import (
    CHECKPOINT_NAME,
    LOG_NAME,
    RichProgressHook,
    TrainConfig,
    Trainer,
    TrainerHook,
    TwoStreamSampler,
    available_configs,
    build_networks,
    load_config,
    split_labeled,
    train_dual,
)

SHAPE = (40, 36, 20)


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_case(seed: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    x0 = int(rng.integers(0, max(shape[0] - 12, 1)))
    label[x0:x0 + 12, 4:12, 2:10] = 1
    image = (rng.normal(size=shape) + 2.0 * label).astype(np.float32)
    return image, label


@pytest.fixture(scope="module")
def data() -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    labeled = [make_case(i) for i in range(3)]
    unlabeled = [make_case(100 + i)[0] for i in range(3)]
    return labeled, unlabeled


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out_dir / LOG_NAME).read_text().splitlines()]


# ----------------------------------------------------------------------------- config


def test_presets_load_with_paper_values() -> None:
    assert {"tiny", "starter", "la_10pct", "pancreas_10pct", "brats"} <= set(available_configs())
    tiny = load_config("tiny")
    assert tiny.name == "tiny" and tiny.networks.net_a.width == 4 and tiny.patch_size == (32, 32, 16)
    la = load_config("la_10pct")
    assert la.patch_size == (112, 112, 80) and la.iterations == 6000 and la.num_labeled == 8
    assert la.lr_schedule.steps == (2500, 5000) and la.optimizer.lr == 0.01
    assert la.optimizer.weight_decay == pytest.approx(1e-4)
    assert la.preprocessing.spacing == (0.625, 0.625, 0.625)
    assert (la.networks.net_a.name, la.networks.net_b.name) == ("resnet_vnet", "vnet")
    assert la.loss.cr_threshold == 0.6 and la.loss.alpha_cr == 0.5 and la.loss.q_start == 20.0
    pancreas = load_config("pancreas_10pct")
    assert pancreas.patch_size == (96, 96, 96) and pancreas.num_labeled == 6
    assert pancreas.preprocessing.intensity.to_card() == {"mode": "ct_window", "window": [-125.0, 275.0]}
    brats = load_config("brats")
    assert brats.in_channels == 1 and brats.num_classes == 2 and brats.num_labeled == 25
    starter = load_config("starter")
    assert starter.networks.net_b.width == 8 and starter.iterations < 1000


def test_load_from_path_and_unknown_keys(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("iterations: 3\noptimizer: {weight_decay: 1e-4}\nloss: {w_u: 2}\n")
    cfg = load_config(good)
    assert cfg.name == "mine" and cfg.iterations == 3 and cfg.loss.w_u == 2.0
    assert cfg.optimizer.weight_decay == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string
    for text, key in [("iterationz: 3\n", "iterationz"), ("loss: {w_uu: 1}\n", "loss.w_uu"),
                      ("networks: {net_a: {nme: vnet}}\n", "networks.net_a.nme")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            load_config(bad)


def test_invalid_values_rejected() -> None:
    base = load_config("tiny")
    for overrides in ({"patch_size": [30, 32, 16]}, {"amp": "fp8"}, {"num_classes": 1},
                      {"iterations": "ten"}, {"modules.cosine": "yes"},
                      {"preprocessing.intensity.mode": "ct_window"}):
        with pytest.raises(ValueError):
            base.with_overrides(overrides)
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_config("no_such_preset")


def test_overrides_and_round_trip() -> None:
    base = load_config("tiny")
    cfg = base.with_overrides({"iterations": 10, "loss.w_u": 0.5, "networks.net_b.width": 8,
                               "modules": {"prototype": False}, "patch_size": (16, 16, 16)})
    assert cfg.iterations == 10 and cfg.loss.w_u == 0.5 and cfg.networks.net_b.width == 8
    assert cfg.modules.prototype is False and cfg.modules.cosine is True
    assert cfg.patch_size == (16, 16, 16)
    assert base.iterations == 4 and base.modules.prototype is True  # the original is unchanged
    with pytest.raises(ValueError, match="loss.nope"):
        base.with_overrides({"loss.nope": 1})
    with pytest.raises(AttributeError):
        base.iterations = 3  # type: ignore[misc]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())  # plain data


# ----------------------------------------------------------------------------- sampler


def test_sampler_shapes_padding_and_determinism() -> None:
    small = make_case(7, (20, 30, 10))  # smaller than the patch on every axis -> padded
    labeled = [make_case(1), small]
    unlabeled = [make_case(2)[0], make_case(3, (24, 24, 12))[0]]

    def draw(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        s = TwoStreamSampler(labeled, unlabeled, (32, 32, 16), 2, 3, seed=seed, foreground_prob=0.5,
                             flip=True)
        return [s.sample() for _ in range(4)]

    a, b, c = draw(0), draw(0), draw(1)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == (5, 1, 32, 32, 16) and xa.dtype == torch.float32
        assert ya.shape == (2, 32, 32, 16) and ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c, strict=True))


def test_sampler_state_dict_resumes_stream() -> None:
    labeled, unlabeled = [make_case(1)], [make_case(2)[0]]
    s = TwoStreamSampler(labeled, unlabeled, (16, 16, 16), 1, 1, seed=5, flip=True)
    s.sample()
    state = s.state_dict()
    expected = s.sample()
    t = TwoStreamSampler(labeled, unlabeled, (16, 16, 16), 1, 1, seed=99, flip=True)
    t.load_state_dict(state)
    got = t.sample()
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_foreground_crops_and_flips_keep_image_and_label_aligned() -> None:
    label = np.zeros((64, 64, 32), np.uint8)
    label[50:54, 5:9, 25:28] = 1  # a small object far from the centre
    image = label.astype(np.float32) * 10.0  # image encodes the label
    s = TwoStreamSampler([(image, label)], [], (16, 16, 16), 3, 0, seed=0, foreground_prob=1.0, flip=True)
    for _ in range(5):
        x, y = s.sample()
        assert x.shape == (3, 1, 16, 16, 16)
        assert (y.flatten(1).sum(1) > 0).all()  # every labeled crop contains foreground
        assert torch.equal(x[:, 0], y.float() * 10.0)  # flips applied to both
    with pytest.raises(ValueError):
        TwoStreamSampler([(image, label)], [], (16, 16, 16), 1, 1)


def test_split_labeled() -> None:
    labeled = [make_case(i, (16, 16, 16)) for i in range(4)]
    unlabeled = [make_case(9, (16, 16, 16))[0]]
    lab, unl = split_labeled(labeled, unlabeled, 1)
    assert len(lab) == 1 and len(unl) == 4 and unl[0] is labeled[1][0]
    lab, unl = split_labeled(labeled, unlabeled, None)
    assert len(lab) == 4 and len(unl) == 1


# ----------------------------------------------------------------------------- training


def test_tiny_run_logs_finite_terms(tmp_path: Path, data: Any) -> None:
    labeled, unlabeled = data
    cfg = load_config("tiny").with_overrides({"num_labeled": 2})

    class Recorder(TrainerHook):
        def __init__(self) -> None:
            self.its: list[int] = []
            self.checkpoints = 0
            self.ended: dict[str, Any] | None = None

        def on_iteration(self, trainer: Trainer, it: int, losses: dict[str, float]) -> None:
            self.its.append(it)

        def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
            self.checkpoints += 1

        def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
            self.ended = summary

    rec = Recorder()
    net_a, net_b, summary = train_dual(cfg, labeled, unlabeled, torch.device("cpu"), tmp_path, [rec])
    log = read_log(tmp_path)
    assert [r["iteration"] for r in log] == [1, 2, 3, 4] and rec.its == [1, 2, 3, 4]
    assert rec.checkpoints == 2 and rec.ended is summary
    expected = {"sup_ce_a", "sup_dice_b", "sup_cr_a", "cps_a", "kl_b", "ef_a", "ef_b", "cosine",
                "contrast_a", "contrast_b", "total", "lr", "seconds", "w_u", "lambda_c", "q"}
    for record in log:
        assert expected <= set(record)
        assert all(math.isfinite(v) for v in record.values())
        assert record["total"] > 0
    assert [r["lr"] for r in log] == pytest.approx([0.01, 0.01, 0.001, 0.001])  # step at 2
    assert log[0]["q"] == pytest.approx(20.0) and log[-1]["q"] == pytest.approx(27.5)
    assert summary["iterations"] == 4 and not summary["stopped"]
    assert summary["num_labeled"] == 2 and summary["num_unlabeled"] == 4
    assert not net_a.training and not net_b.training
    state = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["iteration"] == 4 and state["config"]["name"] == "tiny"
    assert {"net_a", "net_b", "optimizer_a", "optimizer_b", "scaler", "rng"} <= set(state)


def test_resume_equals_uninterrupted_run(tmp_path: Path, data: Any) -> None:
    labeled, unlabeled = data
    cfg = load_config("tiny")
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full_a, full_b, _ = train_dual(cfg, labeled, unlabeled, torch.device("cpu"), full_dir)

    class CrashAt3(TrainerHook):
        def on_iteration(self, trainer: Trainer, it: int, losses: dict[str, float]) -> None:
            if it == 3:
                raise KeyboardInterrupt  # the process dies after iteration 3 was logged

    torch.manual_seed(cfg.seed)
    a, b = build_networks(cfg)
    first = Trainer(cfg, a, b, labeled, unlabeled, torch.device("cpu"), part_dir, [CrashAt3()])
    with pytest.raises(KeyboardInterrupt):
        first.train()
    assert len(read_log(part_dir)) == 3  # ... but the last checkpoint is the one of iteration 2
    ckpt = torch.load(part_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 2
    torch.manual_seed(123)  # a fresh process has different global RNG state
    c, d = build_networks(cfg)
    second = Trainer(cfg, c, d, labeled, unlabeled, torch.device("cpu"), part_dir)
    summary = second.resume()
    assert summary["iterations"] == 4
    for full, resumed in ((full_a, c), (full_b, d)):
        for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "elapsed")} for r in read_log(full_dir)]
    strip2 = [{k: v for k, v in r.items() if k not in ("seconds", "elapsed")} for r in read_log(part_dir)]
    assert strip == strip2


def test_stop_requested_callable_and_flag(tmp_path: Path, data: Any) -> None:
    labeled, unlabeled = data
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    cfg = load_config("tiny").with_overrides({"patch_size": [16, 16, 16], "checkpoint_every": 0})
    _, _, summary = train_dual(cfg, labeled, unlabeled, torch.device("cpu"), tmp_path, stop_requested=stop)
    assert summary["stopped"] and summary["iterations"] == 1
    state = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["iteration"] == 1  # a stopped run leaves a resumable checkpoint
    a, b = build_networks(cfg)
    trainer = Trainer(cfg, a, b, labeled, unlabeled, torch.device("cpu"))
    trainer.request_stop()
    assert trainer.train()["iterations"] == 0


ABLATIONS = {
    "supervised_cr": ["sup_cr_a", "sup_cr_b"],
    "cps_kl": ["cps_a", "cps_b", "kl_a", "kl_b"],
    "entropy_filter": ["ef_a", "ef_b"],
    "cosine": ["cosine"],
    "prototype": ["contrast_a", "contrast_b", "contrast", "lambda_c"],
}


@pytest.mark.parametrize("switch", sorted(ABLATIONS))
def test_ablation_switch_removes_its_term(tmp_path: Path, data: Any, switch: str) -> None:
    labeled, unlabeled = data
    cfg = load_config("tiny").with_overrides(
        {"iterations": 1, "patch_size": [16, 16, 16], f"modules.{switch}": False})
    train_dual(cfg, labeled, unlabeled, torch.device("cpu"), tmp_path)
    (record,) = read_log(tmp_path)
    for key in ABLATIONS[switch]:
        assert key not in record
    for other, keys in ABLATIONS.items():
        if other != switch:
            assert all(k in record for k in keys if k not in ("contrast", "lambda_c")), other
    assert math.isfinite(record["total"])


def test_supervised_only_without_unlabeled(tmp_path: Path, data: Any) -> None:
    labeled, _ = data
    cfg = load_config("tiny").with_overrides({"iterations": 1, "patch_size": [16, 16, 16]})
    class OnlyEnd:  # duck-typed hook with a single callback
        def __init__(self) -> None:
            self.called = False

        def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
            self.called = True

    only_end = OnlyEnd()
    hooks = [RichProgressHook(), only_end]
    _, _, summary = train_dual(cfg, labeled, [], torch.device("cpu"), tmp_path, hooks)
    assert only_end.called
    assert summary["num_unlabeled"] == 0
    assert not any(k.startswith(("cps", "ef", "contrast", "cosine")) for k in summary["final_losses"])


def test_bf16_autocast_run_is_finite(data: Any) -> None:
    labeled, unlabeled = data
    cfg = load_config("tiny").with_overrides({"iterations": 1, "amp": "bf16", "patch_size": [16, 16, 16]})
    _, _, summary = train_dual(cfg, labeled, unlabeled, torch.device("cpu"), None)
    assert summary["amp"] == "bfloat16" and summary["checkpoint"] is None
    assert all(math.isfinite(v) for v in summary["final_losses"].values())
    with pytest.raises(ValueError, match="fp16"):
        train_dual(cfg.with_overrides({"amp": "fp16"}), labeled, unlabeled, torch.device("cpu"), None)


def test_lr_schedules(data: Any) -> None:
    labeled, unlabeled = data
    cfg = load_config("tiny").with_overrides({"iterations": 10, "lr_schedule.kind": "poly"})
    a, b = build_networks(cfg)
    trainer = Trainer(cfg, a, b, labeled, unlabeled, torch.device("cpu"))
    assert trainer.lr_at(0) == pytest.approx(0.01)
    assert trainer.lr_at(5) == pytest.approx(0.01 * 0.5 ** 0.9)
    cfg2 = cfg.with_overrides({"lr_schedule": {"kind": "step", "steps": [3, 6]}})
    trainer2 = Trainer(cfg2, a, b, labeled, unlabeled, torch.device("cpu"))
    assert [trainer2.lr_at(i) for i in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_path_world_size_one(tmp_path: Path, data: Any) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    labeled, unlabeled = data
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        cfg = load_config("tiny").with_overrides({"iterations": 1, "patch_size": [16, 16, 16]})
        _, _, summary = train_dual(cfg, labeled, unlabeled, torch.device("cpu"), tmp_path / "out")
    finally:
        dist.destroy_process_group()
    assert summary["iterations"] == 1 and math.isfinite(summary["final_losses"]["total"])
    state = torch.load(tmp_path / "out" / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state["net_a"])  # saved unwrapped

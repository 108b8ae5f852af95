"""Tests for models/package.py: card validation, save/load round trip, hash and zip safety."""

from __future__ import annotations

import copy
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from models.networks import build_network
from models.package import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelCard,
    PackageError,
    load_package,
    package_hash,
    read_card,
    save_package,
    zip_package,
)

WIDTH = 4


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny nets gain nothing from intra-op threads, and on a busy 2-core box they lose a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def card_dict(
    num_classes: int = 2, patch: tuple[int, int, int] = (16, 16, 16), **over: Any
) -> dict[str, Any]:
    """A complete, valid card (without created_at / content_hash)."""
    code = {"code": "T-D000A", "scheme": "SRT", "meaning": "Anatomical Structure"}
    classes = [
        {
            "index": i,
            "name": "background" if i == 0 else f"class{i}",
            "category": dict(code),
            "type": dict(code),
            "color": [0, 0, 0] if i == 0 else [255, 40 * i, 0],
        }
        for i in range(num_classes)
    ]
    card = {
        "format_version": 1,
        "name": "test-model",
        "version": "0.0.1",
        "architecture": {
            "in_channels": 1,
            "num_classes": num_classes,
            "net_a": {"name": "resnet_vnet", "width": WIDTH},
            "net_b": {"name": "vnet", "width": WIDTH},
        },
        "classes": classes,
        "preprocessing": {"spacing": [1.0, 1.0, 1.0], "orientation": "RAS", "intensity": {"mode": "zscore"}},
        "patch_size": list(patch),
        "training": {"labeled": 2, "unlabeled": 4, "iterations": 0},
        "metrics": {"dice": 0.0},
        "parent_version": None,
    }
    card.update(over)
    return card


def make_card(**kw: Any) -> ModelCard:
    return ModelCard.from_dict(card_dict(**kw))


def make_nets(card: ModelCard, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    arch = card.architecture
    nets = []
    for which in ("net_a", "net_b"):
        net = build_network(
            arch[which]["name"], arch["in_channels"], arch["num_classes"], arch[which]["width"]
        )
        # make BatchNorm running statistics non-trivial so a round trip has something to lose
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        nets.append(net.eval())
    return nets[0], nets[1]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, ModelCard, torch.nn.Module, torch.nn.Module]:
    card = make_card()
    net_a, net_b = make_nets(card)
    out = save_package(tmp_path / "pkg", net_a, net_b, card)
    return out, card, net_a, net_b


def test_save_writes_prefixed_safetensors_and_card(saved: Any) -> None:
    out, card, net_a, net_b = saved
    assert sorted(p.name for p in out.iterdir()) == sorted([CARD_FILE, WEIGHTS_FILE])
    tensors = load_file(str(out / WEIGHTS_FILE))
    assert all(k.startswith(("net_a.", "net_b.")) for k in tensors)
    assert {k[6:] for k in tensors if k.startswith("net_a.")} == set(net_a.state_dict())
    assert {k[6:] for k in tensors if k.startswith("net_b.")} == set(net_b.state_dict())
    data = json.loads((out / CARD_FILE).read_text())
    for key in ModelCard.REQUIRED_KEYS + ModelCard.SAVED_KEYS:
        assert key in data
    assert data["content_hash"] == package_hash(out) == card.content_hash
    assert data["created_at"].endswith("+00:00")
    assert read_card(out).to_dict() == data


@pytest.mark.parametrize("as_zip", [False, True])
def test_round_trip_outputs_identical(saved: Any, tmp_path: Path, as_zip: bool) -> None:
    out, card, net_a, net_b = saved
    path = zip_package(out, tmp_path / "pkg.zip") if as_zip else out
    if as_zip:
        assert package_hash(path) == card.content_hash
    pkg = load_package(path, torch.device("cpu"))
    assert pkg.card.to_dict() == card.to_dict()
    assert pkg.path == path and pkg.content_hash == card.content_hash
    assert not pkg.net_a.training and not pkg.net_b.training
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        for orig, loaded in ((net_a, pkg.net_a), (net_b, pkg.net_b)):
            la, fa = orig(x)
            lb, fb = loaded(x)
            torch.testing.assert_close(la, lb, rtol=0, atol=0)
            torch.testing.assert_close(fa, fb, rtol=0, atol=0)


def test_load_with_device_string_and_custom_factory(saved: Any) -> None:
    out, _, _, _ = saved
    calls = []

    def factory(name: str, **kw: Any) -> torch.nn.Module:
        calls.append((name, kw))
        return build_network(name, **kw)

    pkg = load_package(out, "cpu", build_network=factory)
    assert calls == [
        ("resnet_vnet", {"in_channels": 1, "num_classes": 2, "width": WIDTH}),
        ("vnet", {"in_channels": 1, "num_classes": 2, "width": WIDTH}),
    ]
    assert next(pkg.net_a.parameters()).device == torch.device("cpu")


def test_hash_mismatch_detected(saved: Any) -> None:
    out, _, _, _ = saved
    data = bytearray((out / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF  # flip bits inside the last tensor's data
    (out / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="content_hash"):
        load_package(out)
    # the card was edited instead
    card = json.loads((out / CARD_FILE).read_text())
    card["content_hash"] = "0" * 64
    (out / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(PackageError, match="content_hash"):
        load_package(out)


def _write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "names",
    [
        ["../model.json", WEIGHTS_FILE],
        ["pkg/../../evil.py", CARD_FILE, WEIGHTS_FILE],
        ["/abs/model.json", WEIGHTS_FILE],
        [CARD_FILE, WEIGHTS_FILE, "extra.pkl"],
        [CARD_FILE],
        ["sub/" + CARD_FILE, "sub/" + WEIGHTS_FILE],
    ],
)
def test_unsafe_or_wrong_zip_rejected(saved: Any, tmp_path: Path, names: list[str]) -> None:
    out, _, _, _ = saved
    payload = {CARD_FILE: (out / CARD_FILE).read_bytes(), WEIGHTS_FILE: (out / WEIGHTS_FILE).read_bytes()}
    entries = {n: payload.get(Path(n).name, b"x") for n in names}
    bad = _write_zip(tmp_path / "bad.zip", entries)
    with pytest.raises(PackageError):
        load_package(bad)


def test_missing_and_invalid_card_keys() -> None:
    for key in ModelCard.REQUIRED_KEYS:
        data = card_dict()
        del data[key]
        with pytest.raises(ValueError, match=key):
            ModelCard.from_dict(data)
    with pytest.raises(ValueError, match="content_hash"):
        ModelCard.from_dict({**card_dict(), "created_at": "2025-01-01T00:00:00+00:00"}, require_saved=True)
    mutations = {
        "architecture is missing.*net_a": lambda d: d["architecture"].pop("net_a"),
        "architecture.net_b is missing.*width": lambda d: d["architecture"]["net_b"].pop("width"),
        "classes": lambda d: d["classes"].pop(),
        "classes\\[1\\].category": lambda d: d["classes"][1]["category"].pop("scheme"),
        "index": lambda d: d["classes"][1].update(index=5),
        "color": lambda d: d["classes"][1].update(color=[1, 2]),
        "spacing": lambda d: d["preprocessing"].update(spacing=[1.0, -1.0, 1.0]),
        "orientation": lambda d: d["preprocessing"].update(orientation="LPS"),
        "intensity": lambda d: d["preprocessing"].update(intensity={"mode": "bogus"}),
        "patch_size": lambda d: d.update(patch_size=[16, 16]),
        "patch_size must be 3 positive integers": lambda d: d.update(patch_size=[16.5, 16, 16]),
        "format_version": lambda d: d.update(format_version=99),
    }
    for message, mutate in mutations.items():
        data = copy.deepcopy(card_dict())
        mutate(data)
        with pytest.raises(PackageError, match=message):
            ModelCard.from_dict(data)


def test_card_with_missing_key_on_disk_rejected(saved: Any) -> None:
    out, _, _, _ = saved
    data = json.loads((out / CARD_FILE).read_text())
    del data["architecture"]
    (out / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="architecture"):
        load_package(out)
    (out / CARD_FILE).write_text("{not json")
    with pytest.raises(PackageError, match="JSON"):
        load_package(out)


def test_weights_that_do_not_fit_architecture(tmp_path: Path) -> None:
    card = make_card()
    net_a, net_b = make_nets(card)
    out = save_package(tmp_path / "p", net_a, net_b, card)
    data = json.loads((out / CARD_FILE).read_text())
    data["architecture"]["net_b"]["width"] = WIDTH * 2
    (out / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="net_b"):
        load_package(out)
    with pytest.raises(PackageError):
        load_package(tmp_path / "does-not-exist")

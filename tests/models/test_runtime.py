"""models.runtime: one resolve_device and one resolve_amp, with the caller-specific behaviours kept."""

from __future__ import annotations

import pytest
import torch

from models.runtime import resolve_amp, resolve_device


def test_resolve_device_checks_cuda_only_when_asked() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the unavailable-device branch cannot be shown here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("cuda:1", require_available=False) == torch.device("cuda", 1)  # the worker's


def test_resolve_amp_inference_and_training_modes() -> None:
    cpu = torch.device("cpu")
    for off in (False, "off", "fp32", "none"):
        assert resolve_amp(off, cpu) is None and resolve_amp(off, cpu, training=True) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp("bf16", cpu, training=True) is torch.bfloat16
    assert resolve_amp("fp16", cpu) is torch.float16  # inference: forced dtype on any device
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_amp("fp16", cpu, training=True)  # training: fp16 needs CUDA's GradScaler
    assert resolve_amp("auto", cpu, training=True) in (None, torch.bfloat16)
    assert resolve_amp(True, cpu) in (None, torch.bfloat16)
    with pytest.raises(ValueError):
        resolve_amp("int8", cpu)

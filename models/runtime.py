"""Small helpers shared by training and inference: device choice, autocast dtype, strict-JSON conversion."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None, *, require_available: bool = True) -> torch.device:
    """``"auto"`` / None -> CUDA when available else CPU; anything else as ``torch.device``.

    ``require_available`` (the CLI and the training pipeline): a CUDA device on a machine without CUDA is
    a ``ValueError`` with a hint. The worker passes False: ``DUALSEG_DEVICE=cuda:1`` is taken as given and
    torch reports the problem where the device is first used.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if require_available and dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available (use --device cpu or auto)")
    return dev


_AMP_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
_AMP_OFF = ("none", "off", "fp32", "float32", "false")


def _onednn_bf16() -> bool:
    """oneDNN has bf16 kernels for this CPU (AVX-512 is enough)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return False


def _native_bf16() -> bool:
    """The CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX)."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_amp(amp: bool | str, device: torch.device, *, training: bool = False) -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device`` (None = full float32).

    ``False`` / ``"off"`` / ``"fp32"`` / ``"none"`` -> None. ``True`` / ``"auto"`` -> bfloat16 on CUDA when
    supported else float16; on a CPU bfloat16 when it has bf16 support, else None (logged). A dtype name
    (``"bf16"``, ``"fp16"``) forces that dtype; anything else is a ``ValueError``.

    The two callers differ, and ``training`` keeps both behaviours:

    - inference (``training=False``, the predictor): ``"fp16"`` is allowed on any device, and "bf16
      support" on a CPU means oneDNN has bf16 kernels for it (AVX-512 suffices);
    - training (``training=True``, the trainer's ``config.amp``): ``"fp16"`` needs CUDA (its
      ``GradScaler``), and "bf16 support" on a CPU means native bf16 instructions (AVX512-BF16 or AMX),
      where bf16 training is faster than float32.
    """
    if amp is False or (isinstance(amp, str) and amp.lower() in _AMP_OFF):
        return None
    if isinstance(amp, str) and amp.lower() != "auto":
        try:
            dtype = _AMP_NAMES[amp.lower()]
        except KeyError:
            raise ValueError(f"unknown amp setting {amp!r}; use a bool, 'bf16' or 'fp16'") from None
        if training and dtype == torch.float16 and device.type != "cuda":
            raise ValueError("amp 'fp16' needs a CUDA device; use 'bf16' or 'off' on this device")
        return dtype
    if amp is not True and amp != "auto":
        raise ValueError(f"amp must be a bool or a dtype name, got {amp!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if _native_bf16() if training else _onednn_bf16():
            return torch.bfloat16
        log.info("amp requested but this CPU has no native bf16: running float32")
    return None


def json_safe(value: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value

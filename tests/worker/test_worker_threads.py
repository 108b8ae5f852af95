"""DUALSEG_WORKER_THREADS: the worker's torch thread count (0 keeps torch's default)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from backend.config import Settings
from worker.model_cache import ModelCache


def test_worker_threads_sets_torch_threads(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        ModelCache("cpu", False, 0.5, threads=2)
        assert torch.get_num_threads() == 2
        ModelCache("cpu", False, 0.5)  # 0: unchanged
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert Settings(data_dir=tmp_path).worker_threads == 0
    assert Settings(data_dir=tmp_path, worker_threads=3).worker_threads == 3
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, worker_threads=-1)

"""Per-process cache of loaded model packages (one entry per version + content hash).

A worker loads a package once and keeps its Predictor; when the job asks for a different version
(e.g. the active one changed) the new one is loaded and the old one dropped, so at most ``capacity``
packages occupy device memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.inference.predictor import Predictor

log = logging.getLogger("dualseg.worker.models")


class ModelCache:
    def __init__(self, device: str, amp: bool, overlap: float, capacity: int = 1, threads: int = 0) -> None:
        """``threads`` > 0 sets torch's intra-op thread count of this process (``DUALSEG_WORKER_THREADS``)."""
        from models.runtime import resolve_device

        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.device = resolve_device(device, require_available=False)
        self.amp = amp
        self.overlap = overlap
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Predictor] = OrderedDict()
        self._lock = threading.Lock()
        self.last_load_seconds = 0.0

    def get(self, version: str, content_hash: str, path: Path) -> Predictor:
        key = (version, content_hash)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.last_load_seconds = 0.0
                return self._items[key]
            from models.inference.predictor import Predictor
            from models.package import load_package

            t0 = time.perf_counter()
            package = load_package(path, self.device)
            if package.content_hash != content_hash:
                raise ValueError(f"model {version}: package hash differs from the registry's")
            predictor = Predictor(package, self.device, overlap=self.overlap, amp=self.amp)
            self.last_load_seconds = time.perf_counter() - t0
            log.info("loaded model %s on %s in %.2f s", version, self.device, self.last_load_seconds)
            self._items[key] = predictor
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return predictor

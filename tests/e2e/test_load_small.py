"""CI-sized run of bench/load.py: 10 concurrent uploads and 20 status polls per second for 10 s
against a real API + worker; every job accounted for, no 5xx, no transport error."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import ROOT, LiveStack, make_tiny_package

pytestmark = pytest.mark.slow


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dualseg_bench_load", ROOT / "bench" / "load.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("load")
    s = LiveStack(tmp / "var")
    out = s.cli("models", "import", str(make_tiny_package(tmp / "pkg", version="tiny-load-ci")), "--activate")
    assert "imported" in out.stdout, out.stderr
    s.start("api", "worker")
    yield s
    s.stop()


def test_small_load_every_job_accounted_for(stack: LiveStack) -> None:
    load = _load_module()
    summary = asyncio.run(
        load.run_load(
            stack.base,
            stack.token("annotator"),
            uploads=10,
            concurrency=10,
            poll_rate=20,
            duration=10,
            drain_timeout=240,
            shape=(32, 32, 16),
        )
    )
    print(summary)
    assert summary["jobs_created"] == 10 and summary["job_states"] == {"succeeded": 10}, summary
    assert summary["accounted"] and summary["server_errors"] == 0 and summary["transport_errors"] == 0, (
        summary
    )
    assert summary["polls_sent"] >= 150 and summary["poll_ms"]["p50"] is not None
    assert Path(stack.env["DUALSEG_DATA_DIR"], "artifacts", ".incoming").exists()

"""Every item of the hostile corpus through the real HTTP API (a `dualseg api` process): a clear 4xx
(never a 5xx), a JSON error message, and nothing left behind — same case count, an empty .incoming,
no stray folder under artifacts/cases, no file written outside the data folder."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.corpus.make_corpus import ACCEPTED_SANITISED, Item, build_corpus, reference_image
from tests.helpers import LiveStack, make_tiny_package

ESCAPES = (
    "/tmp/dualseg-evil*",
    "/tmp/dualseg-abs*",
    "/tmp/dualseg-traversal*",
    "/etc/dualseg-*",
    "/dualseg-*",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp = tmp_path_factory.mktemp("corpus")
    s = LiveStack(tmp / "var")
    pkg = make_tiny_package(tmp / "pkg", version="tiny-corpus-1")
    out = s.cli("models", "import", str(pkg), "--activate")
    assert "imported tiny-corpus-1" in out.stdout, out.stderr
    s.start("api")
    yield s
    s.stop()


def _state(stack: LiveStack, client: httpx.Client) -> dict[str, Any]:
    root = Path(stack.env["DUALSEG_DATA_DIR"]) / "artifacts"
    cases = root / "cases"
    return {
        "total": client.get("/api/v1/cases", params={"limit": 500}).json()["total"],
        "incoming": sorted(p.name for p in (root / ".incoming").iterdir())
        if (root / ".incoming").exists()
        else [],
        "case_dirs": sorted(p.name for p in cases.iterdir()) if cases.exists() else [],
        "escapes": sorted(f for pattern in ESCAPES for f in glob.glob(pattern)),
    }


def _send(client: httpx.Client, item: Item, case_id: str) -> httpx.Response:
    parts = [("files" if item.target == "upload" else "file", (name, data)) for name, data in item.files]
    if item.target == "upload":
        return client.post("/api/v1/cases", files=parts, data={"segment": "false", **item.form})
    return client.put(f"/api/v1/cases/{case_id}/correction", files=parts)


def test_hostile_corpus_is_refused_cleanly(stack: LiveStack, tmp_path: Path) -> None:
    from tests.helpers import write_nifti

    image, affine = reference_image()
    with stack.client("annotator", timeout=120) as client:
        ref = client.post(
            "/api/v1/cases",
            data={"segment": "false"},
            files=[
                ("files", ("ref.nii.gz", write_nifti(tmp_path / "ref.nii.gz", image, affine).read_bytes()))
            ],
        )
        assert ref.status_code == 202, ref.text
        case_id = ref.json()["case_id"]
        before = _state(stack, client)
        assert before["case_dirs"] == [case_id] and before["incoming"] == []
        items = build_corpus(tmp_path / "work")
        assert len(items) >= 40
        problems: list[str] = []
        seen: dict[str, int] = {}
        for item in items:
            r = _send(client, item, case_id)
            seen[item.name] = r.status_code
            try:
                message = r.json()["error"]["message"]
            except Exception:  # noqa: BLE001
                message = ""
            if r.status_code >= 500 or r.status_code not in item.expect:
                problems.append(
                    f"{item.name}: HTTP {r.status_code} (expected one of {item.expect}): {r.text[:300]}"
                )
            if not r.headers.get("content-type", "").startswith("application/json") or not message:
                problems.append(f"{item.name}: no JSON error message: {r.text[:200]}")
            after = _state(stack, client)
            if after != before:
                problems.append(f"{item.name}: left something behind: {before} -> {after}")
        corrections = client.get(f"/api/v1/cases/{case_id}/corrections").json()
        assert corrections == [], corrections
        print("\n" + "\n".join(f"{k}: {v}" for k, v in seen.items()))
        assert not problems, "\n".join(problems)
        assert stack.procs["api"].poll() is None, "the API process died"


def test_hostile_names_on_valid_files_are_sanitised(stack: LiveStack, tmp_path: Path) -> None:
    from tests.helpers import write_nifti

    image, affine = reference_image()
    data = write_nifti(tmp_path / "v.nii.gz", image.astype(np.float32), affine).read_bytes()
    with stack.client("admin") as client:
        before = _state(stack, client)
        for name, why in ACCEPTED_SANITISED:
            r = client.post("/api/v1/cases", data={"segment": "false"}, files=[("files", (name, data))])
            assert r.status_code == 202, (why, r.text)
            case = client.get(f"/api/v1/cases/{r.json()['case_id']}").json()
            stored = case["original_name"] or ""
            assert "/" not in stored and "\\" not in stored and ".." not in stored.split("/")[0][:2], stored
            assert not any(ord(c) < 32 for c in stored), stored
            source = Path(stack.env["DUALSEG_DATA_DIR"]) / "artifacts" / "cases" / case["case_id"] / "source"
            files = [p for p in source.rglob("*") if p.is_file()]
            assert len(files) == 1 and files[0].resolve().is_relative_to(source.resolve()), files
            assert client.delete(f"/api/v1/cases/{case['case_id']}").status_code == 204
        after = _state(stack, client)
        assert after == before, (before, after)

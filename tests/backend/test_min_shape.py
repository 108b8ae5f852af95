"""Degenerate volumes (a voxel, one slice, two slices, a thin slab) are refused with 422 and leave nothing.

Through HTTP with the starter model active (patch 48x48x32 at 2 mm: at least 12x12x8 voxels and 2304 in
total on its grid), plus the rule itself and its agreement with the predictor's model grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.db import session_scope
from backend.imaging.errors import VolumeTooSmall
from backend.imaging.min_shape import check_min_shape, model_grid_shape
from backend.main import create_app
from backend.migrations import run_migrations
from backend.security import create_token
from backend.services import registry
from backend.tables import Case, Job, Role
from tests.helpers import oblique_affine, write_nifti

STARTER_CARD = {"name": "starter", "version": "s1", "patch_size": [48, 48, 32],
                "preprocessing": {"spacing": [2.0, 2.0, 2.0]}}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], Settings]]:
    s = Settings(data_dir=tmp_path / "var", secret_key="shape-secret-0123456789")
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    starter = registry.starter_package_path()
    assert starter is not None
    with session_scope(s.resolved_database_url) as session:
        registry.import_package(session, s, starter, activate=True)
        token, _ = create_token(session, s.secret_key, "shape-annotator", Role.annotator)
    with TestClient(create_app(s)) as client:
        yield client, {"Authorization": f"Bearer {token}"}, s


def _upload(api: tuple[TestClient, dict[str, str], Settings], tmp_path: Path, shape: tuple[int, int, int],
            spacing: tuple[float, float, float], **form: str) -> dict:  # type: ignore[type-arg]
    client, auth, _ = api
    image = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    path = write_nifti(tmp_path / "v.nii.gz", image, np.diag([*spacing, 1.0]))
    r = client.post("/api/v1/cases", headers=auth, data=form,
                    files={"files": (path.name, path.read_bytes(), "application/octet-stream")})
    return {"status": r.status_code, **r.json()}


def _nothing_stored(settings: Settings) -> None:
    with session_scope(settings.resolved_database_url) as session:
        assert session.query(Case).count() == 0 and session.query(Job).count() == 0
    root = settings.resolved_storage_dir
    assert not (root / "cases").exists() or not any((root / "cases").iterdir())
    assert not any((root / ".incoming").iterdir())


@pytest.mark.parametrize(
    ("shape", "spacing", "expected"),
    [
        ((1, 1, 1), (1.0, 1.0, 1.0), ["1x1x1 voxels", "at least 4 voxels and 8 mm along each axis"]),
        ((64, 64, 1), (1.0, 1.0, 1.0), ["64x64x1 voxels", "at least 4 voxels and 8 mm along each axis"]),
        ((64, 64, 2), (1.0, 1.0, 3.0), ["64x64x2 voxels", "spanning 64.0x64.0x6.0 mm", "at least 4 voxels"]),
        # extreme aspect ratio: passes the floor, but 4 voxels deep on the 2 mm model grid (needs 8)
        ((400, 400, 8), (0.5, 0.5, 1.0),
         ["400x400x8 voxels", "100x100x4 = 40000 voxels on the model grid",
          "patch 48x48x32 at 2.00x2.00x2.00 mm", "at least 12x12x8 voxels", "2304 voxels in total"]),
    ],
    ids=["1x1x1", "single-slice", "two-slices", "extreme-aspect"],
)
def test_degenerate_uploads_get_422_and_nothing_is_stored(
    api: tuple[TestClient, dict[str, str], Settings], tmp_path: Path, shape: tuple[int, int, int],
    spacing: tuple[float, float, float], expected: list[str],
) -> None:
    body = _upload(api, tmp_path, shape, spacing)
    assert body["status"] == 422, body
    message = body["error"]["message"]
    for part in expected:
        assert part in message, (part, message)
    details = body["error"]["details"]
    assert details["shape"] == list(shape)
    assert details["minimum"]["axis_voxels"] == 4 and details["minimum"]["axis_mm"] == 8.0
    assert details["minimum"]["model"]["axis_voxels"] == [12, 12, 8]
    assert details["minimum"]["model"]["total_voxels"] == 2304
    _nothing_stored(api[2])


def test_small_on_every_axis_is_refused_by_the_total(api: tuple[TestClient, dict[str, str], Settings],
                                                     tmp_path: Path) -> None:
    body = _upload(api, tmp_path, (13, 13, 9), (2.0, 2.0, 2.0))  # every axis passes, 1521 < 2304 voxels
    assert body["status"] == 422 and "13x13x9 = 1521 voxels on the model grid" in body["error"]["message"]
    _nothing_stored(api[2])


def test_the_minimum_itself_is_accepted_and_segment_false_checks_only_the_floor(
    api: tuple[TestClient, dict[str, str], Settings], tmp_path: Path
) -> None:
    client, auth, settings = api
    ok = _upload(api, tmp_path, (16, 16, 9), (2.0, 2.0, 2.0))  # 2304 voxels, each axis >= 12x12x8
    assert ok["status"] == 202, ok
    # stored without a model: only the floor applies; segmenting it later with the starter model is a 422
    slab = _upload(api, tmp_path, (400, 400, 8), (0.5, 0.5, 1.0), segment="false")
    assert slab["status"] == 202 and slab["job_id"] is None, slab
    r = client.post(f"/api/v1/cases/{slab['case_id']}/segmentations", headers=auth, json={})
    assert r.status_code == 422 and "at least 12x12x8 voxels" in r.json()["error"]["message"]
    assert _upload(api, tmp_path, (64, 64, 2), (1.0, 1.0, 1.0), segment="false")["status"] == 422
    with session_scope(settings.resolved_database_url) as session:
        assert session.query(Case).count() == 2 and session.query(Job).count() == 1


def test_rule_without_a_model_and_at_the_float_edge() -> None:
    check_min_shape((4, 4, 4), oblique_affine((2.0, 2.0, 2.0)))  # 4 x 2 mm = 7.9999... mm: accepted
    with pytest.raises(VolumeTooSmall, match="3x4x4 voxels"):
        check_min_shape((3, 4, 4), np.diag([5.0, 5.0, 5.0, 1.0]))
    with pytest.raises(VolumeTooSmall, match="spanning 7.5x40.0x40.0 mm"):
        check_min_shape((5, 40, 40), np.diag([1.5, 1.0, 1.0, 1.0]))
    check_min_shape((5, 40, 40), np.diag([1.6, 1.0, 1.0, 1.0]))
    no_spacing = {**STARTER_CARD, "preprocessing": {"spacing": None}}
    with pytest.raises(VolumeTooSmall, match="64x64x7 = 28672 voxels on the model grid"):
        check_min_shape((64, 64, 7), np.diag([2.0, 2.0, 2.0, 1.0]), no_spacing)


@pytest.mark.parametrize("angle", [0.0, 20.0, 50.0, 80.0])
def test_model_grid_matches_the_predictor(angle: float) -> None:
    from models.data.transforms import preprocess

    affine = oblique_affine((0.7, 1.3, 2.5), angle_deg=angle)
    affine[:3, 0] *= -1  # a flipped axis too
    shape = (30, 22, 9)
    spec = {"spacing": [2.0, 1.5, 1.0], "orientation": "RAS", "intensity": {"mode": "zscore"}}
    _, record = preprocess(np.zeros(shape, np.float32), affine, spec)
    assert model_grid_shape(shape, affine, (2.0, 1.5, 1.0)) == record.model_shape

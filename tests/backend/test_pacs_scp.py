"""The C-STORE SCP in-process: spool, stable-series detection, ingest, AE title checks (pynetdicom SCU)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from backend.broker import SEGMENT_TASK
from backend.config import Settings
from backend.db import session_scope
from backend.migrations import run_migrations
from backend.tables import Case, ModelState, ModelVersion
from tests.helpers import (
    LA_CLASSES,
    TINY_GEOMETRY,
    blob_volume,
    free_port,
    oblique_affine,
    write_dicom_series,
)
from worker.scp import Spool, StoreScp, allowed_calling_aes


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings.model_validate({"data_dir": tmp_path / "var", "scp_port": free_port(),
                                 "scp_ae_title": "DUALSEGT", "scp_stable_s": 0.4,
                                 "scp_allowed_calling_aes": " GOOD , OTHER ",
                                 "secret_key": "test-secret-0123456789"})
    s.ensure_dirs()
    run_migrations(s.resolved_database_url)
    with session_scope(s.resolved_database_url) as session:
        session.add(ModelVersion(version="m1", state=ModelState.active, path=str(tmp_path), content_hash="0",
                                 card={**TINY_GEOMETRY, "classes": LA_CLASSES}))
    return s


class Running:
    def __init__(self, settings: Settings) -> None:
        from backend.storage import ArtifactStore

        self.sent: list[tuple[str, str, str]] = []
        self.scp = StoreScp(settings, ArtifactStore(settings.resolved_storage_dir),
                            send=lambda t, j, q: self.sent.append((t, j, q)))
        self.stop = threading.Event()
        ready = threading.Event()
        self.thread = threading.Thread(target=self.scp.serve, args=(self.stop, 0.1, ready.set), daemon=True)
        self.thread.start()
        assert ready.wait(10)


@pytest.fixture
def running(settings: Settings) -> Iterator[Running]:
    r = Running(settings)
    yield r
    r.stop.set()
    r.thread.join(10)


def _associate(settings: Settings, calling: str, sop_classes: list[str]):  # type: ignore[no-untyped-def]
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for sc in sop_classes:
        ae.add_requested_context(sc)
    return ae.associate("127.0.0.1", settings.scp_port, ae_title=settings.scp_ae_title)


def test_allowed_calling_aes_parse(settings: Settings) -> None:
    assert allowed_calling_aes(settings) == ["GOOD", "OTHER"]


def test_spool_groups_by_series_and_waits_until_stable(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "scp")
    spool.add(b"a", "1.2.3", "1.2.3.1", {"origin": "scp", "calling_ae": "X"})
    spool.add(b"b", "1.2.3", "1.2.3.2", {"origin": "scp", "calling_ae": "Y"})
    spool.add(b"c", "1.2.4", "1.2.4.1", {"origin": "scp"})
    with pytest.raises(ValueError):
        spool.add(b"d", "../x", "1.2", {})
    now = time.time()
    assert spool.stable(5.0, now) == []
    old = now - 10
    for f in (tmp_path / "scp/series/1.2.3").glob("*.dcm"):
        os.utime(f, (old, old))
    stable = spool.stable(5.0, now)
    assert [p.name for p in stable] == ["1.2.3"]
    assert Spool.origin(stable[0])["calling_ae"] == "X"  # the first association's
    spool.done(stable[0], sorted(stable[0].glob("*.dcm")))
    assert not (tmp_path / "scp/series/1.2.3").exists()
    failed = spool.fail(tmp_path / "scp/series/1.2.4", "not an image")
    assert (failed / "reason.txt").read_text().strip() == "not an image"


def test_echo_store_and_segment(settings: Settings, running: Running, tmp_path: Path) -> None:
    image, _ = blob_volume((20, 18, 5), seed=2)
    files = write_dicom_series(tmp_path / "s", image, oblique_affine(), modality="CT")
    datasets = [pydicom.dcmread(f) for f in files]
    refused = _associate(settings, "INTRUDER", [])
    assert not refused.is_established
    wrong_called = _associate(settings.model_copy(update={"scp_ae_title": "SOMEONE"}), "GOOD", [])
    assert not wrong_called.is_established
    assoc = _associate(settings, "GOOD", [datasets[0].SOPClassUID])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    deadline = time.monotonic() + 30
    while not running.sent and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(running.sent) == 1 and running.sent[0][0] == SEGMENT_TASK
    with session_scope(settings.resolved_database_url) as session:
        case = session.query(Case).one()
        assert case.series_uid == str(datasets[0].SeriesInstanceUID) and case.num_files == 5
        assert case.meta["pacs"]["origin"] == "scp" and case.meta["pacs"]["calling_ae"] == "GOOD"
        assert case.created_by == "scp:GOOD" and case.latest_job_id == running.sent[0][1]
    assert list((settings.data_path / "scp/series").iterdir()) == []


def test_a_series_that_is_not_an_image_is_set_aside(settings: Settings, running: Running,
                                                    tmp_path: Path) -> None:
    image, _ = blob_volume((20, 18, 3), seed=2)
    files = write_dicom_series(tmp_path / "s", image, oblique_affine(), modality="CT")
    ds = pydicom.dcmread(files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.66.4")
    assoc = _associate(settings, "OTHER", [ds.SOPClassUID])
    assert assoc.is_established and assoc.send_c_store(ds).Status == 0
    assoc.release()
    failed = settings.data_path / "scp/failed"
    deadline = time.monotonic() + 30
    while not any(failed.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    folders = list(failed.iterdir())
    assert len(folders) == 1 and "derived objects" in (folders[0] / "reason.txt").read_text()
    assert running.sent == []
    with session_scope(settings.resolved_database_url) as session:
        assert session.query(Case).count() == 0


def test_a_series_is_not_stable_while_its_association_is_open(settings: Settings, running: Running,
                                                               tmp_path: Path) -> None:
    image, _ = blob_volume((20, 18, 4), seed=3)
    datasets = [pydicom.dcmread(f) for f in write_dicom_series(tmp_path / "s", image, oblique_affine())]
    assoc = _associate(settings, "GOOD", [datasets[0].SOPClassUID])
    assert assoc.is_established
    for ds in datasets[:2]:
        assert assoc.send_c_store(ds).Status == 0
    time.sleep(settings.scp_stable_s * 3)  # a slow sender: quiet for longer than scp_stable_s
    assert running.sent == [] and running.scp.receiving() == {str(datasets[0].SeriesInstanceUID)}
    for ds in datasets[2:]:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    deadline = time.monotonic() + 30
    while not running.sent and time.monotonic() < deadline:
        time.sleep(0.1)
    with session_scope(settings.resolved_database_url) as session:
        assert [c.num_files for c in session.query(Case).all()] == [4]
    assert running.scp.receiving() == set()


def test_a_degenerate_series_is_set_aside_with_the_minimum(settings: Settings, tmp_path: Path) -> None:
    """The listener's series intake applies the minimum shape (here the tiny model's: 8x8x4 voxels)."""
    from backend.storage import ArtifactStore

    image, _ = blob_volume((40, 36, 3), seed=4)  # three slices of 2 mm: below the 4-voxel floor
    files = write_dicom_series(tmp_path / "s", image, oblique_affine(), modality="CT")
    sent: list[tuple[str, str, str]] = []
    scp = StoreScp(settings, ArtifactStore(settings.resolved_storage_dir),
                   send=lambda t, j, q: sent.append((t, j, q)))
    for f in files:
        ds = pydicom.dcmread(f)
        scp.spool.add(f.read_bytes(), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), {"origin": "scp"})
    assert scp.ingest_stable(now=time.time() + 60) == [] and sent == []
    folders = list((settings.data_path / "scp/failed").iterdir())
    reason = (folders[0] / "reason.txt").read_text()
    assert len(folders) == 1 and "40x36x3 voxels" in reason and "at least 4 voxels and 8 mm" in reason
    assert len(list(folders[0].glob("*.dcm"))) == 3
    assert list((settings.data_path / "scp/series").iterdir()) == []
    with session_scope(settings.resolved_database_url) as session:
        assert session.query(Case).count() == 0
    assert not any((settings.resolved_storage_dir / ".incoming").iterdir())

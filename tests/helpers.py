"""Test helpers: tiny model packages, synthetic volumes, DICOM series writers, live process stacks."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

LA_CLASSES = [
    {"index": 0, "name": "background", "category": {"code": "91772007", "scheme": "SCT", "meaning": "Organ"},
     "type": {"code": "91772007", "scheme": "SCT", "meaning": "Organ"}, "color": [0, 0, 0]},
    {"index": 1, "name": "left atrium",
     "category": {"code": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
     "type": {"code": "82471001", "scheme": "SCT", "meaning": "Left atrium"}, "color": [220, 60, 60]},
]

#: the geometry part of a tiny test model's card (what the minimum-shape rule reads)
TINY_GEOMETRY = {"patch_size": [32, 32, 16],
                 "preprocessing": {"spacing": [1.0, 1.0, 1.0], "orientation": "RAS",
                                   "intensity": {"mode": "zscore"}}}


def make_tiny_package(out_dir: Path, version: str = "tiny-1", seed: int = 0, width: int = 4,
                      patch: tuple[int, int, int] = (32, 32, 16),
                      spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
                      ood_reference: dict[str, Any] | None = None) -> Path:
    """A real (random-weight) dual-network package, small enough for CPU tests; ``ood_reference`` goes into
    ``card.training`` (models/inference/ood.py)."""
    import torch

    from models.networks import build_network
    from models.package import ModelCard, save_package

    torch.manual_seed(seed)
    net_a = build_network("resnet_vnet", in_channels=1, num_classes=2, width=width)
    net_b = build_network("vnet", in_channels=1, num_classes=2, width=width)
    card = ModelCard(
        name="tiny-test", version=version,
        architecture={"in_channels": 1, "num_classes": 2, "net_a": {"name": "resnet_vnet", "width": width},
                      "net_b": {"name": "vnet", "width": width}},
        classes=LA_CLASSES, preprocessing={"spacing": list(spacing), "orientation": "RAS",
                                           "intensity": {"mode": "zscore"}},
        patch_size=list(patch), metrics={}, parent_version=None,
        training={"note": "random weights (tests)",
                  **({"ood_reference": ood_reference} if ood_reference else {})},
    )
    return save_package(out_dir, net_a, net_b, card)


def blob_volume(shape: tuple[int, int, int] = (40, 36, 24), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid on noise and its label: (image float32, label uint8)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.5, 0.45, 0.6])[:, None, None, None]) ** 2).sum(0))
    label = (r < 1).astype(np.uint8)
    image = (label * 200 + 100 + rng.normal(0, 20, shape)).astype(np.float32)
    return image, label


def oblique_affine(spacing: tuple[float, float, float] = (0.9, 1.1, 2.0), angle_deg: float = 20.0,
                   origin: tuple[float, float, float] = (-30.0, 12.5, 40.0)) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    aff = np.eye(4)
    aff[:3, :3] = rot * np.array(spacing)
    aff[:3, 3] = origin
    return aff


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    nib.save(img, str(path))
    return path


def write_dicom_series(folder: Path, image: np.ndarray, affine: np.ndarray, modality: str = "MR",
                       shuffle_names: bool = True, series_uid: str | None = None,
                       study_uid: str | None = None, seed: int = 0) -> list[Path]:
    """Write ``image[i, j, k]`` (RAS affine) as a single-frame DICOM series with scaled int16 pixels."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    col_dir = lps[:3, 0] / np.linalg.norm(lps[:3, 0])  # i: along a row (column index)
    row_dir = lps[:3, 1] / np.linalg.norm(lps[:3, 1])  # j: down the columns (row index)
    dx, dy = float(np.linalg.norm(lps[:3, 0])), float(np.linalg.norm(lps[:3, 1]))
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = generate_uid()
    sop_class = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    slope, intercept = 0.5, -100.0
    order = list(range(image.shape[2]))
    if shuffle_names:
        random.Random(seed).shuffle(order)
    paths = []
    for rank, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Test^Phantom", "PHANTOM-1"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.SeriesDescription = "phantom"
        ds.Manufacturer = "dualseg-tests"
        ds.ImageOrientationPatient = [float(v) for v in (*col_dir, *row_dir)]
        pos = (lps @ np.array([0, 0, k, 1.0]))[:3]
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.PixelSpacing = [dy, dx]  # row spacing, column spacing
        ds.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if modality == "CT":
            ds.RescaleType = "HU"
        stored = np.round((image[:, :, k].T - intercept) / slope).astype(np.int16)  # rows = j, cols = i
        ds.PixelData = stored.tobytes()
        path = folder / f"img_{rank:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveStack:
    """`dualseg api` + `dualseg worker` as real processes on a free loopback port."""

    def __init__(self, data_dir: Path, database_url: str | None = None, broker_url: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DUALSEG_") or k.startswith("DUALSEG_TEST_")}
        self.env.update({"DUALSEG_DATA_DIR": str(data_dir), "DUALSEG_PORT": str(self.port),
                         "DUALSEG_SWEEP_INTERVAL_S": "5", "PYTHONUNBUFFERED": "1"})
        if database_url:
            self.env["DUALSEG_DATABASE_URL"] = database_url
        if broker_url:
            self.env["DUALSEG_BROKER_URL"] = broker_url
        self.env.update(extra_env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens: dict[str, str] = {}
        self.logs = data_dir / "logs"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "backend.cli", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, check=check, timeout=300)

    def token(self, role: str = "admin") -> str:
        """A bearer token of ``role`` created through the real CLI (cached per role)."""
        if role not in self.tokens:
            created = self.cli("tokens", "create", "--role", role, "--name", f"tests-{role}")
            self.tokens[role] = created.stdout.strip()
        return self.tokens[role]

    def client(self, role: str = "admin", timeout: float = 60) -> Any:
        import httpx

        return httpx.Client(base_url=self.base, timeout=timeout,
                            headers={"Authorization": f"Bearer {self.token(role)}"})

    def start(self, *names: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        cmds = {"api": ["api"], "worker": ["worker", "--queues", "inference,training", "--pool", "solo"],
                "worker-beat": ["worker", "--queues", "inference,training", "--pool", "solo", "--beat"]}
        for name in names:
            log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "backend.cli", *cmds[name]],
                                                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if "api" in names:
            self.wait_http("/healthz")

    def wait_http(self, path: str, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{path} did not answer: {self.log_tail('api')}")

    def log_tail(self, name: str, n: int = 4000) -> str:
        p = self.logs / f"{name}.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def stop(self, name: str | None = None, sig: int = 15) -> None:
        for key in [name] if name else list(self.procs):
            proc = self.procs.pop(key, None)
            if proc is None:
                continue
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_job(self, client: Any, job_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = client.get(f"/api/v1/jobs/{job_id}").json()
            if body["state"] in ("succeeded", "failed", "cancelled"):
                return body
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} still {body.get('state')}: worker log:\n{self.log_tail('worker')}")

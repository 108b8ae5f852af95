"""models/training/pipeline.py: dataset folder -> package, evaluation on the original grid, predict a file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from models.data.phantoms import write_phantom_dataset
from models.data.transforms import validate_intensity_spec
from models.inference.files import predict_file
from models.metrics import METRIC_NAMES
from models.package import load_package
from models.training.config import load_config
from models.training.pipeline import (
    class_entries,
    evaluate_package,
    intensity_spec,
    load_dataset,
    train_from_dataset,
)

SHAPE = (40, 40, 24)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, cases=4, seed=3, test_cases=1, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def package(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config("tiny").with_overrides({"iterations": 2, "num_labeled": 3})
    out = tmp_path_factory.mktemp("pkg") / "model"
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return train_from_dataset(dataset, cfg, out, device="cpu", version="tiny-test", progress=False)


def test_package_card_counts_and_metrics(package: Path) -> None:
    pkg = load_package(package, "cpu")
    card = pkg.card
    assert card.version == "tiny-test" and card.name == "dualseg-tiny" and card.parent_version is None
    data = card.training["data"]
    assert (data["labeled"], data["unlabeled"], data["labeled_available"], data["test"]) == (3, 1, 4, 1)
    assert data["labeled_ids"] == ["phantom_000", "phantom_001", "phantom_002"]  # first N by id
    assert card.training["iterations"] == 2 and card.training["device"] == "cpu"
    assert card.training["config"]["num_labeled"] == 3 and card.training["seconds"] >= 0
    assert "synthetic phantoms only" in card.training["note"] and card.training["dataset"]["synthetic"]
    assert card.preprocessing == {"spacing": [1.0, 1.0, 1.0], "orientation": "RAS",
                                  "intensity": {"mode": "zscore"}}
    assert card.patch_size == [32, 32, 16]
    assert card.architecture["net_a"] == {"name": "resnet_vnet", "width": 4}
    m = card.metrics
    assert m["num_cases"] == 1 and m["split"] == "test"
    assert 0.0 <= m["dice"] <= 1.0 and 0.0 <= m["jaccard"] <= m["dice"] + 1e-9
    assert set(m["per_class"]) == {"left_atrium"}
    assert set(m["per_class"]["left_atrium"]) == set(METRIC_NAMES)
    lab = card.classes[1]
    assert lab["name"] == "left_atrium"
    assert lab["category"] == {"code": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}
    assert lab["type"] == {"code": "82471001", "scheme": "SCT", "meaning": "Left atrium"}
    assert card.classes[0]["index"] == 0 and card.classes[0]["name"] == "background"
    work = package / "training"
    assert (work / "train_log.jsonl").is_file() and (work / "evaluation.json").is_file()
    assert not (work / "checkpoint.pt").exists()  # removed after a finished run
    # strict JSON (no NaN tokens) in the card
    json.loads((package / "model.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in card"))


def test_evaluate_package_per_class(package: Path, dataset: Path) -> None:
    report = evaluate_package(package, dataset, device="cpu", progress=False)
    assert report["num_cases"] == 1 and report["version"] == "tiny-test"
    case = report["cases"][0]
    assert case["id"] == "phantom_004"
    assert set(case["metrics"]["left_atrium"]) == set(METRIC_NAMES)
    dice = report["aggregate"]["left_atrium"]["dice"]
    assert dice["n"] + dice["n_nan"] == 1 and 0.0 <= dice["mean"] <= 1.0
    assert report["summary"]["dice"] == pytest.approx(dice["mean"])
    # the same case given as a list of (image, label) paths gives the same numbers
    pairs = [(dataset / "imagesTs" / "phantom_004.nii.gz", dataset / "labelsTs" / "phantom_004.nii.gz")]
    again = evaluate_package(package, pairs, device="cpu", progress=False)
    assert again["cases"][0]["id"] == "phantom_004"
    assert again["summary"]["dice"] == pytest.approx(report["summary"]["dice"])
    train = evaluate_package(package, dataset, device="cpu", progress=False, split="train")
    assert train["num_cases"] == 4


def test_predict_file_keeps_the_input_affine(package: Path, dataset: Path, tmp_path: Path) -> None:
    src = dataset / "imagesTs" / "phantom_004.nii.gz"
    paths = predict_file(package, src, tmp_path / "out", device="cpu")
    assert set(paths) == {"mask", "entropy", "regions", "disagreement"}
    assert paths["mask"].name == "phantom_004_mask.nii.gz"
    ref = nib.load(str(src))
    mask, entropy = nib.load(str(paths["mask"])), nib.load(str(paths["entropy"]))
    for img in (mask, entropy, nib.load(str(paths["disagreement"]))):
        assert img.shape == ref.shape
        assert np.array_equal(img.affine, ref.affine)
    assert mask.get_data_dtype() == np.uint8 and entropy.get_data_dtype() == np.float32
    values = entropy.get_fdata()
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    doc = json.loads(paths["regions"].read_text())
    assert doc["model"]["version"] == "tiny-test" and doc["shape"] == list(ref.shape)
    assert sum(doc["voxels_per_class"].values()) == int(np.prod(ref.shape))
    assert isinstance(doc["regions"], list)


def test_resume_continues_from_the_checkpoint(dataset: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny").with_overrides({"iterations": 2, "num_labeled": 3})
    out = tmp_path / "run"
    train_from_dataset(dataset, cfg, out, device="cpu", progress=False, keep_checkpoint=True)
    assert (out / "training" / "checkpoint.pt").is_file()
    more = cfg.with_overrides({"iterations": 3})
    train_from_dataset(dataset, more, out, device="cpu", progress=False, resume=True, version="v2",
                       parent_version="v1")
    card = load_package(out, "cpu").card
    assert card.training["iterations"] == 3 and card.parent_version == "v1"
    log = [json.loads(line) for line in (out / "training" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]


def test_bad_inputs(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither an MSD"):
        load_dataset(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        load_dataset(tmp_path / "missing")
    cfg = load_config("tiny").with_overrides({"num_classes": 3})
    with pytest.raises(ValueError, match="num_classes=2"):
        train_from_dataset(dataset, cfg, tmp_path / "x", device="cpu", progress=False)
    empty = tmp_path / "empty_ts"
    write_phantom_dataset(empty, cases=1, seed=0, test_cases=0, shape=(32, 32, 16))
    with pytest.raises(ValueError, match="no labeled test cases"):
        evaluate_package(tmp_path / "nothing", empty, device="cpu", progress=False)


def test_intensity_specs_and_class_codes() -> None:
    base = load_config("tiny")
    for over in ({"preprocessing.intensity": {"mode": "ct_window", "window": [-100.0, 240.0]}},
                 {"preprocessing.intensity": {"mode": "clip_zscore", "clip_percentiles": [0.5, 99.5]}}):
        spec = intensity_spec(base.with_overrides(over))
        validate_intensity_spec(spec)
    assert intensity_spec(load_config("pancreas_10pct"))["lower"] == -125.0
    classes = class_entries({0: "background", 1: "Pancreas", 2: "tumour"})
    assert [c["type"]["code"] for c in classes] == ["85756007", "15776009", "85756007"]
    assert [c["index"] for c in classes] == [0, 1, 2]


def test_la_h5_folder_is_read(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    for name in ("b_case", "a_case", "t_case"):
        (tmp_path / name).mkdir()
        with h5py.File(tmp_path / name / "mri_norm2.h5", "w") as f:
            f["image"] = rng.normal(size=(20, 18, 12)).astype(np.float32)
            f["label"] = (rng.random((20, 18, 12)) > 0.8).astype(np.uint8)
    (tmp_path / "train.list").write_text("b_case\na_case\n")
    (tmp_path / "test.list").write_text("t_case\n")
    source = load_dataset(tmp_path)
    assert source.kind == "la_h5" and source.class_names == {0: "background", 1: "left_atrium"}
    assert [it.id for it in source.labeled] == ["a_case", "b_case"]  # sorted by id
    assert [it.id for it in source.test] == ["t_case"] and source.unlabeled == []
    image, affine, label = source.labeled[0].load()
    assert image.shape == (1, 20, 18, 12) and image.dtype == np.float32
    assert label is not None and label.dtype == np.uint8 and np.allclose(np.diag(affine)[:3], 0.625)

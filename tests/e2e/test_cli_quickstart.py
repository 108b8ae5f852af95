"""The README's "Training your own model" quickstart through the real `dualseg` CLI, in subprocesses:
phantoms -> train -> evaluate -> predict; and `dualseg predict` without --model uses the starter package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import ROOT

STARTER = ROOT / "models" / "assets" / "starter"
pytestmark = pytest.mark.slow  # several subprocesses, each importing torch


def dualseg(tmp_path: Path, *args: str, ok: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m backend.cli ARGS`` (what the ``dualseg`` script runs) with its own data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALSEG_")}
    env.update({"DUALSEG_DATA_DIR": str(tmp_path / "var"), "OMP_NUM_THREADS": "1", "COLUMNS": "160"})
    proc = subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"dualseg {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("quickstart")
    data, model = tmp / "phantoms", tmp / "tiny-model"
    out = dualseg(tmp, "phantoms", "--out", str(data), "--cases", "3", "--seed", "1", "--test", "1")
    assert "wrote 3 training + 1 test phantoms" in out.stdout
    out = dualseg(tmp, "train", "--config", "tiny", "--data", str(data), "--out", str(model),
                  "--iterations", "2", "--device", "cpu", "--set", "num_labeled=2", "--version", "qs-1",
                  "--threads", "1")
    assert "package qs-1 written" in out.stdout and "test Dice" in out.stdout
    return {"tmp": tmp, "data": data, "model": model}


def test_train_writes_a_package(quickstart: dict[str, Path]) -> None:
    card = json.loads((quickstart["model"] / "model.json").read_text())
    assert card["version"] == "qs-1" and card["training"]["iterations"] == 2
    assert card["training"]["data"]["labeled"] == 2 and card["training"]["data"]["unlabeled"] == 1
    assert 0.0 <= card["metrics"]["dice"] <= 1.0
    assert (quickstart["model"] / "weights.safetensors").stat().st_size > 10_000


def test_evaluate_prints_a_table_and_writes_json(quickstart: dict[str, Path]) -> None:
    report_path = quickstart["tmp"] / "eval.json"
    out = dualseg(quickstart["tmp"], "evaluate", "--model", str(quickstart["model"]), "--data",
                  str(quickstart["data"]), "--json", str(report_path), "--device", "cpu")
    assert "left_atrium" in out.stdout and "HD95" in out.stdout and "±" in out.stdout
    report = json.loads(report_path.read_text())
    assert report["num_cases"] == 1 and report["version"] == "qs-1"
    assert 0.0 <= report["aggregate"]["left_atrium"]["dice"]["mean"] <= 1.0
    assert report["cases"][0]["id"] == "phantom_003"


def test_predict_with_a_package(quickstart: dict[str, Path]) -> None:
    src = quickstart["data"] / "imagesTs" / "phantom_003.nii.gz"
    out_dir = quickstart["tmp"] / "pred"
    out = dualseg(quickstart["tmp"], "predict", str(src), str(out_dir), "--model", str(quickstart["model"]),
                  "--device", "cpu")
    assert "uncertain region" in out.stdout
    ref = nib.load(str(src))
    mask = nib.load(str(out_dir / "phantom_003_mask.nii.gz"))
    entropy = nib.load(str(out_dir / "phantom_003_entropy.nii.gz"))
    assert mask.shape == ref.shape and np.array_equal(mask.affine, ref.affine)
    assert np.array_equal(entropy.affine, ref.affine) and mask.get_data_dtype() == np.uint8
    e = entropy.get_fdata()
    assert 0.0 <= e.min() and e.max() <= 1.0
    regions = json.loads((out_dir / "phantom_003_regions.json").read_text())
    assert regions["model"]["version"] == "qs-1"


def test_bad_input_exits_with_code_2(quickstart: dict[str, Path]) -> None:
    """In-process (typer's runner on the same app) to spare a torch import per case."""
    from typer.testing import CliRunner

    from backend.cli import app

    tmp, data = quickstart["tmp"], str(quickstart["data"])
    x = str(tmp / "x")
    cases = {
        "unknown preset": ["train", "--config", "no_such_preset", "--data", data, "--out", x],
        "missing data": ["train", "--config", "tiny", "--data", str(tmp / "missing"), "--out", x],
        "unknown key": ["train", "--config", "tiny", "--data", data, "--out", x,
                        "--set", "loss.no_such_key=1"],
        "bad --set": ["train", "--config", "tiny", "--data", data, "--out", x, "--set", "novalue"],
        "wrong classes": ["train", "--config", "tiny", "--data", data, "--out", x,
                          "--set", "num_classes=3"],
        "resume without checkpoint": ["train", "--config", "tiny", "--data", data, "--out", x,
                                      "--resume"],
        "bad device": ["train", "--data", data, "--out", x, "--device", "tpu"],
        "unknown model": ["evaluate", "--model", "no-such-version", "--data", data],
        "missing input": ["predict", str(tmp / "missing.nii.gz"), str(tmp / "o")],
        "no cases": ["phantoms", "--out", str(tmp / "p"), "--cases", "0"],
    }
    runner = CliRunner()
    for what, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (what, result.output)
        assert "error" in result.output.lower(), (what, result.output)
    assert not (tmp / "x" / "model.json").exists()


def test_train_register_makes_the_model_resolvable(quickstart: dict[str, Path], tmp_path: Path) -> None:
    """`train --register --activate` imports the package; `--model VERSION` and no --model then find it
    (in-process; the per-test DUALSEG_DATA_DIR holds the registry)."""
    from typer.testing import CliRunner

    from backend.cli import app
    from backend.cli_ml import resolve_model

    out = tmp_path / "reg"
    result = CliRunner().invoke(app, ["train", "--config", "tiny", "--data", str(quickstart["data"]), "--out",
                                      str(out), "--iterations", "1", "--version", "qs-reg", "--device", "cpu",
                                      "--register", "--activate", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "registered qs-reg (active)" in result.output
    path, how = resolve_model(None)
    assert how == "active model" and (path / "model.json").is_file()
    assert json.loads((path / "model.json").read_text())["version"] == "qs-reg"
    assert resolve_model("qs-reg") == (path, "registered version qs-reg")


def test_predict_without_model_uses_the_starter(quickstart: dict[str, Path]) -> None:
    if not (STARTER / "model.json").is_file():
        pytest.skip("models/assets/starter is not shipped in this checkout")
    src = quickstart["data"] / "imagesTs" / "phantom_003.nii.gz"
    out_dir = quickstart["tmp"] / "pred_starter"
    out = dualseg(quickstart["tmp"], "predict", str(src), str(out_dir), "--device", "cpu")
    assert "starter package" in out.stdout
    starter = json.loads((STARTER / "model.json").read_text())
    regions = json.loads((out_dir / "phantom_003_regions.json").read_text())
    assert regions["model"]["version"] == starter["version"]
    assert "synthetic phantoms only" in starter["training"]["note"]
    mask = np.asarray(nib.load(str(out_dir / "phantom_003_mask.nii.gz")).dataobj)
    label = np.asarray(nib.load(str(quickstart["data"] / "labelsTs" / "phantom_003.nii.gz")).dataobj)
    inter = float(np.logical_and(mask == 1, label == 1).sum())
    dice = 2 * inter / max(float((mask == 1).sum() + (label == 1).sum()), 1.0)
    assert dice > 0.5, f"the starter model should segment a phantom usefully (Dice {dice:.3f})"

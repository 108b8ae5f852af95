"""`dualseg reference`: record the OOD reference of an existing package; the weights stay as they were."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from backend.cli import app
from models.data.phantoms import write_phantom_dataset
from models.package import load_package, package_hash
from tests.helpers import make_tiny_package


def test_reference_is_recorded_and_scores_cases(tmp_path: Path) -> None:
    data = tmp_path / "ph"
    write_phantom_dataset(data, 3, seed=2, test_cases=0, shape=(48, 40, 32))
    pkg = make_tiny_package(tmp_path / "pkg", spacing=(2.0, 2.0, 2.0))
    weights_before = package_hash(pkg)
    result = CliRunner().invoke(app, ["reference", "--model", str(pkg), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "3 cases" in result.output
    card = json.loads((pkg / "model.json").read_text())
    ref = card["training"]["ood_reference"]
    assert ref["cases"] == 3 and len(ref["vectors"]) == 3 and ref["threshold"] > 0
    assert package_hash(pkg) == weights_before
    assert load_package(pkg).card.training["ood_reference"]["cases"] == 3
    bad = CliRunner().invoke(app, ["reference", "--model", str(tmp_path / "nope"), "--data", str(data)])
    assert bad.exit_code == 2 and "error" in bad.output

"""`dualseg phantoms | train | evaluate | predict`: the ML engineer's commands.

Their own Typer app, merged into the `dualseg` command by ``backend.cli``. torch and ``models`` are
imported inside the commands only. Bad input (missing files, unknown config keys, inconsistent datasets)
prints ``error: ...`` and exits with code 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from backend.config import get_settings
from backend.migrations import run_migrations

DEVICES = ("auto", "cpu", "cuda")

app = typer.Typer()


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def _bad_input() -> Iterator[None]:
    """Turn the library's input errors into ``error: ...`` + exit code 2."""
    from models.package import PackageError

    try:
        yield
    except (ValueError, FileNotFoundError, PackageError) as exc:
        _fail(str(exc))


@contextmanager
def _progress_bar(description: str) -> Iterator[Callable[[float], None]]:
    """A rich progress bar driven by fractions in [0, 1]."""
    from rich.progress import Progress

    with Progress() as progress:
        task = progress.add_task(description, total=1.0)
        yield lambda fraction: progress.update(task, completed=fraction)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["loss.w_u=0.5", "modules.prototype=false"]`` -> ``{"loss.w_u": 0.5, ...}`` (values as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            _fail(f"--set {key}: value {raw!r} is not valid YAML: {exc}")
    return out


def _check_device(device: str) -> str:
    if device not in DEVICES:
        _fail(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    return device


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            _fail("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)


def resolve_model(model: str | None) -> tuple[Path, str]:
    """A package path, a registered version, or (None) the active model, else the shipped starter.

    Returns ``(package path, how it was found)``.
    """
    if model is not None:
        path = Path(model)
        if path.exists():
            return path, "package"
        version_path = _registry_path(model)
        if version_path is None:
            _fail(f"--model {model!r} is neither a package folder / .zip nor a registered model version")
        return version_path, f"registered version {model}"
    active = _registry_path(None)
    if active is not None:
        return active, "active model"
    from backend.services.registry import starter_package_path

    starter = starter_package_path()
    if starter is None:
        _fail("no --model given, no active model in the registry and no starter package shipped "
              "(models/assets/starter)")
    return starter, "starter package"


def _registry_path(version: str | None) -> Path | None:
    """Path of ``version`` (None: the active one) in the registry, or None; never creates a database."""
    from sqlalchemy.exc import SQLAlchemyError

    from backend.db import session_scope
    from backend.errors import NotFound
    from backend.services import registry

    s = get_settings()
    url = s.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    try:
        with session_scope(url) as session:
            if version is None:
                mv = registry.active_version(session)
            else:
                mv = registry.get_version(session, version)
            return Path(mv.path) if mv is not None else None
    except (NotFound, SQLAlchemyError):
        return None


@app.command()
def phantoms(
    out: Annotated[Path, typer.Option("--out", help="target folder (MSD layout)")],
    cases: Annotated[int, typer.Option(help="number of training cases")] = 40,
    seed: Annotated[int, typer.Option(help="base seed (case i depends only on seed and i)")] = 0,
    test: Annotated[int | None, typer.Option("--test", help="test cases (default 20 % of --cases)")] = None,
    family: Annotated[str, typer.Option(
        help="mr: atrium-like MR phantoms (the starter's data); ct: contrast-CT-like chambers on oblique "
             "grids, another 'site' (models/data/phantoms_ct.py)")] = "mr",
) -> None:
    """Write a synthetic phantom dataset (MSD layout, labelsTs included)."""
    from models.data.phantoms import write_phantom_dataset

    if cases < 1:
        _fail("--cases must be >= 1")
    if seed < 0 or (test is not None and test < 0):
        _fail("--seed and --test must be >= 0")
    with _bad_input(), _progress_bar("phantoms") as bar:
        info = write_phantom_dataset(out, cases, seed=seed, test_cases=test, progress=bar, family=family)
    typer.echo(f"wrote {info['num_training']} training + {info['num_test']} test phantoms to {out} "
               f"in {info['seconds']:.1f} s")


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="dataset folder (MSD / nnU-Net, or LA .h5)")],
    out: Annotated[Path, typer.Option("--out", help="package folder to write")],
    config: Annotated[str, typer.Option("--config", help="preset name (configs/) or YAML path")] = "starter",
    iterations: Annotated[int | None, typer.Option(help="override the config's iterations")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="config override key=value (dotted keys, YAML values); repeatable")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    resume: Annotated[bool, typer.Option(help="continue from OUT/training/checkpoint.pt")] = False,
    register: Annotated[bool, typer.Option(help="import the package into the model registry")] = False,
    activate: Annotated[bool, typer.Option(help="with --register: make it the active model")] = False,
    version: Annotated[str | None, typer.Option(help="version string (default <config>-<UTC time>)")] = None,
    parent: Annotated[str | None, typer.Option(help="parent version recorded in the card")] = None,
    keep_checkpoint: Annotated[bool, typer.Option(help="keep OUT/training/checkpoint.pt")] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's)")] = None,
) -> None:
    """Train the dual network on a dataset folder, evaluate it on the test split, write a model package."""
    from models.training.config import load_config
    from models.training.pipeline import train_from_dataset

    _check_device(device)
    _set_threads(threads)
    with _bad_input():
        cfg = load_config(config)
        changes = _parse_overrides(overrides or [])
        if iterations is not None:
            changes["iterations"] = iterations
        if changes:
            cfg = cfg.with_overrides(changes)
        if resume and not (out / "training" / "checkpoint.pt").is_file():
            _fail(f"--resume: no checkpoint at {out / 'training' / 'checkpoint.pt'}")
        package = train_from_dataset(data, cfg, out, device=device, version=version, resume=resume,
                                     parent_version=parent, keep_checkpoint=keep_checkpoint)
    card = json.loads((package / "model.json").read_text())
    t = card["training"]
    typer.echo(f"package {card['version']} written to {package} ({t['iterations']} iterations, "
               f"{t['seconds']:.0f} s on {t['device']}, {t['data']['labeled']} labeled + "
               f"{t['data']['unlabeled']} unlabeled)")
    dice = card["metrics"].get("dice")
    if dice is not None:
        typer.echo(f"test Dice {dice:.4f} over {card['metrics']['num_cases']} case(s)")
    if register:
        _register(package, activate)


def _register(package: Path, activate: bool) -> None:
    from backend.db import session_scope
    from backend.errors import DomainError
    from backend.services import registry

    s = get_settings()
    run_migrations()
    try:
        with session_scope(s.resolved_database_url) as session:
            mv = registry.import_package(session, s, package, activate=activate)
            typer.echo(f"registered {mv.version} ({mv.state.value})")
    except DomainError as exc:
        _fail(exc.message)


def _fmt(stats: dict[str, Any] | None, digits: int) -> str:
    if not stats or stats.get("mean") is None or not math.isfinite(stats["mean"]):
        return "-"
    text = f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return text + (f" ({stats['n_nan']} NaN)" if stats.get("n_nan") else "")


@app.command()
def reference(
    model: Annotated[Path, typer.Option("--model", help="package folder to update")],
    data: Annotated[Path, typer.Option("--data", help="the data the package was trained on (MSD / LA .h5)")],
    cases: Annotated[int, typer.Option(help="at most this many cases, evenly spaced")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "cpu",
) -> None:
    """Record the out-of-distribution reference of a package: the case features of its training data.

    A package trained by `dualseg train` has one already; this is for packages made before or elsewhere.
    """
    import torch

    from models.data.transforms import preprocess
    from models.package import load_package, rewrite_card
    from models.runtime import resolve_device
    from models.training.pipeline import load_dataset, training_reference

    _check_device(device)
    with _bad_input():
        dev = resolve_device(device)
        pkg = load_package(model, dev)
        src = load_dataset(data)
        items = list(src.labeled) + list(src.unlabeled)
        if len(items) < 2:
            _fail(f"{data}: at least 2 training cases are needed, found {len(items)}")
        step = max(1, len(items) // max(1, cases))
        arrays = []
        with _progress_bar("features") as bar:
            picked = items[::step][:cases]
            for i, it in enumerate(picked):
                image, affine, _ = it.load()
                arrays.append(preprocess(image, affine, pkg.card.preprocessing)[0])
                bar((i + 1) / len(picked))
        with torch.inference_mode():
            ref = training_reference(pkg, arrays, dev)
        assert ref is not None
        pkg.card.training["ood_reference"] = ref
        rewrite_card(model, pkg.card)
    typer.echo(f"recorded the OOD reference of {pkg.card.version}: {ref['cases']} cases, "
               f"threshold {ref['threshold']:.3f}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Option("--model", help="package folder / .zip or registered version")],
    data: Annotated[Path, typer.Option("--data", help="dataset folder with a labeled test split")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report here")] = None,
    split: Annotated[str, typer.Option(help="test (imagesTs/labelsTs) | train (labelsTr)")] = "test",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Evaluate a model on a dataset: Dice, Jaccard, HD95 and ASD (mm) per class, mean ± std."""
    from rich.console import Console
    from rich.table import Table

    from models.training.pipeline import evaluate_package, json_safe

    _check_device(device)
    _set_threads(threads)
    package, how = resolve_model(model)
    with _bad_input():
        report = evaluate_package(package, data, device=device, split=split)
    table = Table(title=f"{report['version']} on {data} ({split}, {report['num_cases']} cases)")
    for column in ("class", "Dice", "Jaccard", "HD95 (mm)", "ASD (mm)"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, metrics in report["aggregate"].items():
        table.add_row(name, _fmt(metrics.get("dice"), 4), _fmt(metrics.get("jaccard"), 4),
                      _fmt(metrics.get("hd95_mm"), 2), _fmt(metrics.get("asd_mm"), 2))
    Console().print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        report["package"] = str(package)
        json_out.write_text(json.dumps(json_safe(report), indent=1) + "\n")
        typer.echo(f"report written to {json_out}")


@app.command()
def predict(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="NIfTI volume (.nii / .nii.gz)")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUTDIR", help="folder for the outputs")],
    model: Annotated[str | None, typer.Option(
        "--model", help="package or registered version (default: active model, else the starter)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    disagreement: Annotated[bool, typer.Option(help="also write the per-net disagreement map")] = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Segment one volume: mask, entropy map, uncertain-region list (and disagreement), on its own grid."""
    from models.inference.files import predict_file

    _check_device(device)
    _set_threads(threads)
    if not input_path.is_file():
        _fail(f"input file not found: {input_path}")
    package, how = resolve_model(model)
    typer.echo(f"model: {package} ({how})")
    with _bad_input(), _progress_bar(f"segmenting {input_path.name}") as bar:
        paths = predict_file(package, input_path, out_dir, device=device, disagreement=disagreement,
                             progress=bar)
    regions = json.loads(paths["regions"].read_text())
    typer.echo(f"{len(regions['regions'])} uncertain region(s); mean entropy {regions['mean_entropy']:.4f}")
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")

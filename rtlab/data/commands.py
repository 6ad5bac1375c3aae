"""`rtlab data ...`: prepare datasets ahead of time and list what is available.

Mounted by `rtlab/cli.py` as `app.add_typer(data_app, name="data")`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from rtlab.data.base import DataError
from rtlab.data.cache import default_data_dir
from rtlab.data.registry import DATASETS, load_dataset

data_app = typer.Typer(help="Prepare and inspect datasets.", no_args_is_help=True)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """['size=full', 'p=0.3'] -> {'size': 'full', 'p': 0.3} (values read as YAML scalars)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DataError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise DataError(f"--option {pair!r}: bad value ({err})") from err
    return options


@data_app.command("prepare")
def prepare(
    name: Annotated[str, typer.Argument(help="dataset name (see `rtlab data list`)")],
    out: Annotated[
        Path | None, typer.Option("--out", help="data directory [default: $RTLAB_DATA_DIR]")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="dataset option KEY=VALUE")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="rebuild even if the cache is intact")
    ] = False,
) -> None:
    """Prepare a dataset into the data directory (verifies and reuses an intact cache)."""
    try:
        start = time.perf_counter()
        dataset = load_dataset(name, parse_options(option or []), out, force=force)
    except DataError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    elapsed = time.perf_counter() - start
    meta = dataset.meta
    typer.echo(f"{name}: ready in {elapsed:.2f} s (fingerprint {dataset.fingerprint[:12]})")
    if "directory" in meta:
        typer.echo(f"  directory: {meta['directory']}")
    for key, value in meta.get("sizes", {}).items():
        typer.echo(f"  {key}: {value:,}")
    if "prepare_seconds" in meta:
        typer.echo(f"  preparation took {meta['prepare_seconds']} s")
    if dataset.task == "regression":
        typer.echo(f"  generated on the fly; n_features: {dataset.n_features}")
    elif "sizes" not in meta:
        typer.echo(f"  generated on the fly; vocab_size: {dataset.vocab_size}")


@data_app.command("list")
def list_datasets() -> None:
    """List the datasets and their options with defaults."""
    typer.echo(f"data directory: {default_data_dir()}")
    for entry in DATASETS.values():
        defaults = ", ".join(f"{k}={v}" for k, v in entry.defaults.items()) or "-"
        typer.echo(f"{entry.name:20s} {entry.description}\n{'':20s} options: {defaults}")

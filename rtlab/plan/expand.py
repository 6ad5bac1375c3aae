"""Expand a checked experiment into runs: arm x grid point x seed, each a `RunConfig` whose
config hash is its identity."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rtlab.config import DataConfig, RunConfig, canonical_json, format_value
from rtlab.spec import ExperimentSpec

DataFingerprint = Callable[[DataConfig], str]


def plan_runs(
    spec: ExperimentSpec, data_fingerprint: DataFingerprint | None = None
) -> list[RunConfig]:
    """Every run of the experiment, ordered arm, grid point, seed (as written in the file).

    `data_fingerprint(data) -> str` identifies the prepared data (e.g.
    `lambda d: load_data_section(d).fingerprint`); it is called once per distinct data section.
    Without it the hash covers the data section as written only.
    """
    fingerprints: dict[str, str] = {}
    runs: list[RunConfig] = []
    for arm in spec.arms:
        for point in spec.grid_points():
            sections = spec.resolve(arm, point)
            data_key = canonical_json(sections.data.model_dump())
            if data_key not in fingerprints:
                fingerprints[data_key] = data_fingerprint(sections.data) if data_fingerprint else ""
            runs += [
                RunConfig(experiment=spec.name, arm=arm, seed=seed, grid_point=dict(point),
                          data=sections.data, model=sections.model, train=sections.train,
                          data_fingerprint=fingerprints[data_key])
                for seed in spec.seeds
            ]
    return runs


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"reasoning": {"n": 1}}}` -> `{"model.reasoning.n": 1}` (MLflow params);
    an empty section has no leaves and gives no key."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def plan_table(
    runs: Iterable[RunConfig], status_by_hash: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Rows for `rtlab run --dry-run`: run, arm, grid point, seed, config hash, status.

    `status_by_hash` maps config hashes to a state (e.g. "FINISHED", "RUNNING", "FAILED");
    runs not in it are "pending".
    """
    status_by_hash = status_by_hash or {}
    return [
        {
            "run": run.run_name,
            "arm": run.arm,
            "grid_point": ", ".join(f"{k}={format_value(v)}" for k, v in run.grid_point.items()),
            "seed": run.seed,
            "config_hash": run.config_hash,
            "status": status_by_hash.get(run.config_hash, "pending"),
        }
        for run in runs
    ]

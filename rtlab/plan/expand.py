"""Expand a checked experiment into runs: arm x grid point x seed, each with its resolved config
and its identity, the config hash."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rtlab.spec import ExperimentSpec

HASH_LENGTH = 12
DataFingerprint = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class RunPlan:
    """One run. `config` is the fully resolved {data, model, train}; `config_hash` its identity."""

    arm: str
    grid_point: dict[str, Any]
    seed: int
    config: dict[str, Any]
    config_hash: str
    run_name: str
    data_fingerprint: str = ""


def _normalise(value: Any) -> Any:
    """JSON-ready form in which equal configs are equal: integral floats become ints (1.0 == 1),
    so writing `learning_rate: 1` or `1.0` does not make a different run."""
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "inf", "nan": JSON has no literal for them
    return value


def canonical_json(obj: Any) -> str:
    """Key order, whitespace and integral-float spelling do not change the text."""
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: Mapping[str, Any], seed: int, data_fingerprint: str = "") -> str:
    """sha256 of canonical JSON of (config, seed, data fingerprint), first 12 hex digits."""
    payload = canonical_json({"config": config, "seed": seed, "data": data_fingerprint})
    return hashlib.sha256(payload.encode("ascii")).hexdigest()[:HASH_LENGTH]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | list):
        return canonical_json(value)
    return str(value)


def grid_labels(keys: Iterable[str]) -> dict[str, str]:
    """Short labels for grid keys in run names: the last part, unless two keys share it."""
    keys = list(keys)
    lasts = [k.split(".")[-1] for k in keys]
    return {k: (last if lasts.count(last) == 1 else k) for k, last in zip(keys, lasts, strict=True)}


def run_name(arm: str, grid_point: Mapping[str, Any], seed: int) -> str:
    """`arm[-key=value...]-s{seed}`, e.g. `reasoning-n_tokens=2-delay=1-s0`."""
    labels = grid_labels(grid_point)
    parts = [arm] + [f"{labels[k]}={_format_value(v)}" for k, v in grid_point.items()]
    return "-".join(parts + [f"s{seed}"])


def plan_runs(
    spec: ExperimentSpec, data_fingerprint: DataFingerprint | None = None
) -> list[RunPlan]:
    """Every run of the experiment, ordered arm, grid point, seed (as written in the file).

    `data_fingerprint(data_section) -> str` identifies the prepared data (e.g.
    `lambda d: load_dataset(d["name"], d).fingerprint`); it is called once per distinct data
    section.
    Without it the hash covers the data section as written only.
    """
    fingerprints: dict[str, str] = {}
    plans: list[RunPlan] = []
    for arm in spec.arms:
        for point in spec.grid_points():
            config = spec.resolve(arm, point)
            data_key = canonical_json(config["data"])
            if data_key not in fingerprints:
                fingerprints[data_key] = (
                    data_fingerprint(config["data"]) if data_fingerprint else ""
                )
            fingerprint = fingerprints[data_key]
            for seed in spec.seeds:
                plans.append(RunPlan(
                    arm=arm,
                    grid_point=dict(point),
                    seed=seed,
                    config=copy.deepcopy(config),  # plans are handed out: none shares state
                    config_hash=config_hash(config, seed, fingerprint),
                    run_name=run_name(arm, point, seed),
                    data_fingerprint=fingerprint,
                ))
    return plans


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
    plans: Iterable[RunPlan], status_by_hash: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Rows for `rtlab run --dry-run`: run, arm, grid point, seed, config hash, status.

    `status_by_hash` maps config hashes to a state (e.g. "FINISHED", "RUNNING", "FAILED");
    runs not in it are "pending".
    """
    status_by_hash = status_by_hash or {}
    rows = []
    for plan in plans:
        rows.append({
            "run": plan.run_name,
            "arm": plan.arm,
            "grid_point": ", ".join(
                f"{k}={_format_value(v)}" for k, v in plan.grid_point.items()
            ),
            "seed": plan.seed,
            "config_hash": plan.config_hash,
            "status": status_by_hash.get(plan.config_hash, "pending"),
        })
    return rows

"""Experiment -> runs (arm x grid point x seed) with resolved configs and config hashes."""

from rtlab.plan.expand import (
    RunPlan,
    canonical_json,
    config_hash,
    flatten_config,
    plan_runs,
    plan_table,
    run_name,
)

__all__ = [
    "RunPlan",
    "canonical_json",
    "config_hash",
    "flatten_config",
    "plan_runs",
    "plan_table",
    "run_name",
]

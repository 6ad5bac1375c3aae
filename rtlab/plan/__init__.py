"""Experiment -> runs (arm x grid point x seed): `RunConfig`s with their config hashes."""

from rtlab.plan.expand import flatten_config, plan_runs, plan_table

__all__ = ["flatten_config", "plan_runs", "plan_table"]

"""Experiment -> runs (arm x grid point x seed): `RunConfig`s with their config hashes; a searched
experiment -> one study per arm x grid point, whose trials are RunConfigs too."""

from rtlab.plan.expand import flatten_config, plan_runs, plan_table
from rtlab.plan.search import plan_studies, study_name, trial_run

__all__ = ["flatten_config", "plan_runs", "plan_studies", "plan_table", "study_name", "trial_run"]

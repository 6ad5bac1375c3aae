"""Experiment files: schema, safe YAML loading and located error messages."""

from rtlab.config import TrainConfig
from rtlab.spec.errors import Problem, SpecError
from rtlab.spec.loader import ExperimentSpec, load_spec, parse_spec
from rtlab.spec.schema import Claim

__all__ = [
    "Claim",
    "ExperimentSpec",
    "Problem",
    "SpecError",
    "TrainConfig",
    "load_spec",
    "parse_spec",
]

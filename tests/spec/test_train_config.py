"""TrainConfig: defaults, derived defaults, strict types, impossible combinations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rtlab.config import TrainConfig


def test_derived_defaults_follow_the_values_they_derive_from():
    cfg = TrainConfig(max_iters=300, learning_rate=2e-3)
    assert cfg.lr_decay_iters == 300
    assert cfg.min_lr == pytest.approx(2e-4)
    explicit = TrainConfig(max_iters=300, lr_decay_iters=200, min_lr=0.0)
    assert explicit.lr_decay_iters == 200 and explicit.min_lr == 0.0


def test_resolved_dict_round_trips_as_the_trainer_reads_it():
    cfg = TrainConfig(max_iters=50, warmup_iters=5, threads=1)
    again = TrainConfig.model_validate(cfg.model_dump())
    assert again == cfg


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"max_iters": 10, "warmup_iters": 11}, "warmup_iters"),
        ({"max_iters": 10, "warmup_iters": 5, "lr_decay_iters": 5}, "lr_decay_iters"),
        ({"learning_rate": 1e-4, "min_lr": 1e-3}, "min_lr"),
    ],
)
def test_impossible_combinations_are_refused_naming_the_field(fields, key):
    with pytest.raises(ValidationError, match=key):
        TrainConfig(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_iters": "100"},  # strings are not numbers here: YAML already typed the value
        {"batch_size": True},
        {"batch_size": 0},
        {"learning_rate": 0.0},
        {"learning_rate": float("inf")},
        {"beta2": 1.0},
        {"device": "gpu"},
        {"dtype": "float64"},
        {"threads": 0},
        {"max_itres": 10},
    ],
)
def test_bad_values_are_refused(fields):
    with pytest.raises(ValidationError):
        TrainConfig(**fields)


def test_integers_are_accepted_for_floats():
    assert TrainConfig(learning_rate=1, min_lr=0).learning_rate == 1.0

"""rtlab.config: the one typed config. Validated once, errors located by field path, a RunConfig
survives a trip through JSON (the sweep queue) with its identity, and no torch or mlflow."""

import subprocess
import sys

import pydantic
import pytest

from rtlab.config import (
    DEFER_CROSS_CHECKS,
    DataConfig,
    GPTConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_hash,
)


def make_run(**changes) -> RunConfig:
    fields = dict(
        experiment="e", arm="reasoning", seed=3, grid_point={"model.n_layer": 2},
        data=DataConfig(name="shakespeare_char", size="tiny"),
        model=ModelConfig(n_layer=2, reasoning={"n_tokens": 1, "delay": 2}),
        train=TrainConfig(max_iters=10, learning_rate=3e-3), data_fingerprint="abc",
    )
    return RunConfig(**{**fields, **changes})


def test_run_config_round_trips_through_json_with_its_hash():
    run = make_run()
    again = RunConfig.from_json(run.to_json())
    assert again == run
    assert again.config_hash == run.config_hash
    assert again.run_name == "reasoning-n_layer=2-s3"


def test_hash_covers_sections_seed_and_data_but_not_the_arm_name():
    run = make_run()
    assert run.config_hash == config_hash(run.sections(), 3, "abc")
    assert make_run(arm="other").config_hash == run.config_hash  # same run under another name
    assert make_run(seed=4).config_hash != run.config_hash
    assert make_run(data_fingerprint="abd").config_hash != run.config_hash
    other_train = TrainConfig(max_iters=10, learning_rate=3e-3, beta2=0.95)
    assert make_run(train=other_train).config_hash != run.config_hash


def test_integral_floats_do_not_change_the_hash():
    one = make_run(train=TrainConfig(max_iters=10, learning_rate=1))
    one_point_zero = make_run(train=TrainConfig(max_iters=10, learning_rate=1.0))
    assert one.config_hash == one_point_zero.config_hash


def test_derived_train_defaults_are_stated():
    train = TrainConfig(max_iters=300, learning_rate=4e-3)
    assert train.lr_decay_iters == 300 and train.min_lr == pytest.approx(4e-4)


@pytest.mark.parametrize(
    "section,fields,path",
    [
        (ModelConfig, {"n_head": 5}, ("n_head",)),
        (ModelConfig, {"myopic": "strict", "reasoning": {"n_tokens": 1}}, ("myopic",)),
        (ModelConfig, {"myopic_impl": "fused", "dropout": 0.1}, ("myopic_impl",)),
        (TrainConfig, {"max_iters": 5, "warmup_iters": 6}, ("warmup_iters",)),
        (TrainConfig, {"learning_rate": 1e-3, "min_lr": 1e-2}, ("min_lr",)),
    ],
)
def test_cross_field_problems_carry_their_field_path(section, fields, path):
    value = section.model_validate(fields, context={DEFER_CROSS_CHECKS: True})
    assert [p for p, _ in value.cross_field_problems()] == [path]
    with pytest.raises(pydantic.ValidationError, match=path[0]):
        section.model_validate(fields)


def test_field_errors_carry_their_field_path():
    with pytest.raises(pydantic.ValidationError) as info:
        ModelConfig.model_validate({"reasoning": {"delay": 0}, "n_layers": 2})
    assert {e["loc"] for e in info.value.errors()} == {("reasoning", "delay"), ("n_layers",)}


def test_strict_types_refuse_strings_for_numbers():
    with pytest.raises(pydantic.ValidationError, match="n_layer"):
        ModelConfig.model_validate({"n_layer": "4"})


def test_the_model_section_is_gptconfig_without_what_the_dataset_decides():
    assert set(GPTConfig.model_fields) - set(ModelConfig.model_fields) == {
        "vocab_size", "n_features"}
    with pytest.raises(pydantic.ValidationError, match="vocab_size"):
        ModelConfig.model_validate({"vocab_size": 65})


def test_data_config_keeps_its_options_apart_from_the_name():
    data = DataConfig(name="precache_synthetic", n_train=100)
    assert data.name == "precache_synthetic" and data.options == {"n_train": 100}


@pytest.mark.slow
def test_importing_the_config_imports_neither_torch_nor_mlflow():
    code = ("import sys, rtlab.config, rtlab.spec, rtlab.plan; "
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

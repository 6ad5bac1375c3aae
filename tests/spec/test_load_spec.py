"""load_spec: resolution of arms and grids, --set overrides, error locations, the model contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtlab.config import DataConfig, GPTConfig, ModelConfig, TrainConfig
from rtlab.spec import ExperimentSpec, SpecError, load_spec, parse_spec

HERE = Path(__file__).parent
VALID = HERE / "valid_minimal.yaml"


def spec_text(extra: str = "", **replace: str) -> str:
    text = VALID.read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text + extra


def test_valid_spec_loads_with_its_parts():
    spec = load_spec(VALID)
    assert isinstance(spec, ExperimentSpec)
    assert spec.name == "corpus" and spec.seeds == [0, 1]
    assert spec.arms == ["baseline", "reasoning_1"]
    assert spec.grid == {} and spec.grid_points() == [{}]
    assert spec.path == VALID and spec.text == VALID.read_text(encoding="utf-8")


def test_resolved_config_fills_every_default():
    config = load_spec(VALID).resolve("baseline").as_dict()
    assert set(config) == {"data", "model", "train"}
    assert config["data"] == {"name": "shakespeare_char", "size": "tiny"}  # dataset default added
    train = config["train"]
    assert set(train) == set(TrainConfig.model_fields)
    assert train["lr_decay_iters"] == train["max_iters"] == 10  # derived default
    assert train["min_lr"] == pytest.approx(train["learning_rate"] / 10)
    assert config["model"]["reasoning"] == {
        "n_tokens": 0, "delay": 1, "input": "duplicate", "loss_on_reasoning": False
    }


def test_resolve_gives_the_typed_sections():
    sections = load_spec(VALID).resolve("reasoning_1")
    assert isinstance(sections.data, DataConfig) and sections.data.name == "shakespeare_char"
    assert isinstance(sections.model, ModelConfig) and sections.model.reasoning.n_tokens == 1
    assert isinstance(sections.train, TrainConfig) and sections.train.max_iters == 10


def test_model_section_is_exactly_gptconfig_minus_what_the_dataset_decides():
    config = load_spec(VALID).resolve("baseline").as_dict()
    assert set(config["model"]) == set(GPTConfig.model_fields) - {"vocab_size", "n_features"}
    # ...so the trainer can build the model from it once the dataset adds the vocabulary.
    model = GPTConfig.from_dict({**config["model"], "vocab_size": 65})
    assert model.n_layer == 1 and model.n_embd == 16


def test_every_gptconfig_field_can_be_set_from_the_spec():
    defaults = GPTConfig()
    for name in GPTConfig.model_fields:
        if name in ("vocab_size", "n_features", "reasoning", "n_head", "n_embd"):
            continue
        value = getattr(defaults, name)
        value = str(value).lower() if isinstance(value, bool) else value
        spec = load_spec(VALID, [f"base.model.{name}={value}"])
        assert spec.resolve("baseline").as_dict()["model"][name] == getattr(defaults, name)


def test_arm_override_merges_into_base_deeply():
    spec = load_spec(VALID, ["base.model.reasoning.delay=2"])
    base, arm = spec.resolve("baseline").as_dict(), spec.resolve("reasoning_1").as_dict()
    assert arm["model"]["reasoning"] == {**base["model"]["reasoning"], "n_tokens": 1}
    assert arm["model"]["reasoning"]["delay"] == 2  # kept from base, not reset by the override
    assert {k: v for k, v in arm["model"].items() if k != "reasoning"} == {
        k: v for k, v in base["model"].items() if k != "reasoning"
    }
    assert spec.variants["baseline"] == {}


def test_yaml_1_1_pitfalls_read_as_written():
    text = spec_text(**{
        "    n_embd: 16\n": "    n_embd: 16\n    myopic: off\n",
        "    eval_iters: 1\n": "    eval_iters: 1\n    learning_rate: 3e-4\n",
    })
    spec = parse_spec(text, "x.yaml")
    config = spec.resolve("baseline").as_dict()
    assert config["model"]["myopic"] == "off"
    assert config["train"]["learning_rate"] == 3e-4


def test_overrides_apply_in_order_and_can_add_arms_and_grids():
    spec = load_spec(VALID, [
        "base.train.max_iters=20",
        "base.train.max_iters=30",
        "seeds=[3]",
        "variants.myopic.model.myopic=strict",
        "grid.train.learning_rate=[1e-3, 2e-3]",
    ])
    assert spec.seeds == [3]
    assert spec.arms == ["baseline", "reasoning_1", "myopic"]
    assert spec.grid == {"train.learning_rate": [1e-3, 2e-3]}
    assert spec.resolve("myopic", {"train.learning_rate": 2e-3}).train.max_iters == 30
    assert spec.overrides[0] == "base.train.max_iters=20"


def test_grid_points_are_the_cartesian_product_in_file_order():
    extra = "grid:\n  model.n_layer: [1, 2]\n  train.learning_rate: [0.001, 0.002, 0.003]\n"
    spec = parse_spec(spec_text(extra), "g.yaml")
    points = spec.grid_points()
    assert len(points) == 6
    assert points[0] == {"model.n_layer": 1, "train.learning_rate": 0.001}
    assert points[-1] == {"model.n_layer": 2, "train.learning_rate": 0.003}
    assert spec.resolve("reasoning_1", points[-1]).as_dict()["model"]["n_layer"] == 2


def test_error_lines_have_the_documented_format():
    text = spec_text(**{"n_layer: 1": "n_layers: 1", "batch_size: 2": "batch_size: -1"})
    with pytest.raises(SpecError) as info:
        parse_spec(text, "exp.yaml")
    assert str(info.value).splitlines() == [
        "exp.yaml:10:5: base.model.n_layers: unknown key 'n_layers' (did you mean 'n_layer'?)",
        "exp.yaml:15:17: base.train.batch_size: Input should be greater than or equal to 1, got -1",
    ]
    problem = info.value.problems[0]
    assert (problem.line, problem.col, problem.key_path) == (10, 5, "base.model.n_layers")


def test_bad_override_is_reported_as_set_with_the_file():
    with pytest.raises(SpecError) as info:
        load_spec(VALID, ["base.model.n_head=3"])
    assert str(info.value) == (
        f"{VALID}: --set base.model.n_head: n_head (3) must divide n_embd (16)"
    )


def test_override_of_a_value_inside_a_value_is_refused():
    message = r"--set base.train.max_iters.x: 'base.train.max_iters' holds a value"
    with pytest.raises(SpecError, match=message):
        load_spec(VALID, ["base.train.max_iters.x=1"])


def test_missing_file_and_non_utf8_file_name_the_file(tmp_path: Path):
    with pytest.raises(SpecError, match="nope.yaml: no such file"):
        load_spec(tmp_path / "nope.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError, match="binary.yaml: not UTF-8"):
        load_spec(binary)


def test_later_stages_do_not_cascade_from_a_broken_base():
    # A bad base value is reported once, not again for every arm that inherits it.
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text(**{"max_iters: 10": "max_iters: 0"}), "c.yaml")
    assert len(info.value.problems) == 1


def test_many_problems_are_capped():
    arms = "".join(f"  arm{i}:\n    modle: {{}}\n" for i in range(80))
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text(arms), "many.yaml")
    assert len(info.value.problems) == 51
    assert info.value.problems[-1].message == "... and 30 more problems"


def test_resolve_rejects_an_unknown_arm():
    with pytest.raises(KeyError, match="no arm 'nope'"):
        load_spec(VALID).resolve("nope")


def test_an_arm_or_grid_naming_another_dataset_does_not_inherit_base_options():
    extra = (
        "  synthetic:\n    data:\n      name: precache_synthetic\n"
        "    model:\n      head: regression\n"
    )
    spec = parse_spec(spec_text(extra), "d.yaml")
    assert spec.resolve("baseline").data == DataConfig(name="shakespeare_char", size="tiny")
    assert spec.resolve("synthetic").as_dict()["data"] == {
        "name": "precache_synthetic", "p": 0.5, "window": 10, "frequency": 10.0}
    grid = "grid.data.name=[shakespeare_char, shakespeare]"
    spec = load_spec(VALID, ["base.data.size=tiny", grid])
    assert spec.resolve("baseline", {"data.name": "shakespeare"}).as_dict()["data"] == {
        "name": "shakespeare", "size": "full"
    }


def test_type_errors_speak_yaml_not_pydantic_class_names():
    with pytest.raises(SpecError) as info:
        load_spec(VALID, ["variants.baseline=3"])
    assert "should be a mapping" in str(info.value)
    assert "VariantOverride" not in str(info.value)


def test_empty_grid_and_claims_mean_none():
    spec = parse_spec(spec_text("grid:\nclaims:\n"), "e.yaml")
    assert spec.grid == {} and spec.claims == [] and len(spec.grid_points()) == 1


def test_arm_names_cannot_hold_dots():
    with pytest.raises(SpecError, match=r"e.yaml:\d+:3: variants.a.b: invalid name 'a.b'"):
        parse_spec(spec_text("  a.b: {}\n"), "e.yaml")

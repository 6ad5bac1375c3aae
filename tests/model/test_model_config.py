"""GPTConfig: round trip, and bad values raise ValueError naming the field."""

import pydantic
import pytest
import torch

from rtlab.model import GPT, GPTConfig, ReasoningConfig
from tests.helpers.gpt import tiny_batch, tiny_model


def test_from_dict_to_dict_round_trip_with_nested_reasoning():
    d = {"n_layer": 3, "reasoning": {"n_tokens": 2, "delay": 3, "input": "learned"}}
    config = GPTConfig.from_dict(d)
    assert isinstance(config.reasoning, ReasoningConfig)
    assert config.reasoning.delay == 3
    assert GPTConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["reasoning"]["input"] == "learned"


def test_pydantic_validates_the_dataclass_without_a_second_copy_of_the_fields():
    adapter = pydantic.TypeAdapter(GPTConfig)
    config = adapter.validate_python({"myopic": "paper", "reasoning": {"n_tokens": 0}})
    assert config.myopic == "paper"
    with pytest.raises(pydantic.ValidationError, match="myopic"):
        adapter.validate_python({"myopic": "sometimes"})


@pytest.mark.parametrize(
    "fields,field_name",
    [
        ({"n_head": 5}, "n_head"),
        ({"reasoning": {"delay": 0}}, "reasoning.delay"),
        ({"reasoning": {"n_tokens": 9}}, "reasoning.n_tokens"),
        ({"reasoning": {"n_tokens": -1}}, "reasoning.n_tokens"),
        ({"reasoning": {"input": "copy"}}, "reasoning.input"),
        ({"myopic": "yes"}, "myopic"),
        ({"myopic_impl": "fast"}, "myopic_impl"),
        ({"head": "classifier"}, "head"),
        ({"n_layer": 0}, "n_layer"),
        ({"dropout": 1.5}, "dropout"),
        ({"huber_delta": 0.0}, "huber_delta"),
        ({"myopic": "strict", "myopic_impl": "fused", "dropout": 0.1}, "myopic_impl"),
        ({"myopic": "strict", "reasoning": {"n_tokens": 1}}, "myopic"),
        ({"n_layers": 2}, "n_layers"),
        ({"reasoning": {"tokens": 2}}, "reasoning.tokens"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(fields, field_name):
    with pytest.raises(ValueError, match=field_name.replace(".", r"\.")):
        GPTConfig.from_dict(fields)


def test_sequence_longer_than_block_size_is_rejected_naming_block_size():
    model = tiny_model()
    x, _ = tiny_batch(model, T=model.config.block_size + 1)
    with pytest.raises(ValueError, match="block_size"):
        model(x)


def test_generate_rejects_a_prompt_longer_than_block_size():
    model = tiny_model()
    x, _ = tiny_batch(model, T=model.config.block_size + 1)
    with pytest.raises(ValueError, match="block_size"):
        model.generate(x, 1)


def test_wrong_regression_input_width_is_rejected_naming_n_features():
    model = tiny_model(head="regression", n_features=3)
    with pytest.raises(ValueError, match="n_features"):
        model(torch.randn(2, 4, 2, dtype=torch.float64))


def test_slot_embedding_exists_only_with_reasoning_tokens():
    assert "slot_emb" not in dict(tiny_model().named_parameters())
    params = dict(tiny_model(reasoning={"n_tokens": 3}).named_parameters())
    assert params["slot_emb"].shape == (3, 16)


def test_num_params_excludes_only_the_position_embedding():
    model = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=8))
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - 8 * 32


def test_configure_optimizers_decays_matrices_only():
    model = tiny_model(reasoning={"n_tokens": 2})
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert any(p is model.slot_emb for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_forcing_flex_attention_with_attention_dropout_is_an_error():
    model = tiny_model(reasoning={"n_tokens": 1}, dropout=0.1).train()
    model.set_attention_backend("flex")
    x, y = tiny_batch(model)
    with pytest.raises(ValueError, match="dropout"):
        model(x, y)

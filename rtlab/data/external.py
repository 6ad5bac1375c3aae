"""Token files made elsewhere: nanoGPT `train.bin`/`val.bin` directories, and OpenWebText.

`nanogpt_bin` opens a directory prepared by nanoGPT (uint16 `train.bin` and `val.bin`). The
vocabulary comes from nanoGPT's `meta.pkl` when present, else from the `vocab_size` option or
`tokenizer: gpt2` (50257). `meta.pkl` is a pickle, and unpickling runs code; rtlab unpickles it with
an Unpickler that refuses every class and function, so only plain dicts, lists, strings and numbers
load, and anything else is a DataError. The files are scanned once (sha256 and the largest token
id, cached by path, size and mtime), so a corpus whose ids exceed the vocabulary is refused.

`openwebtext` prepares OpenWebText the way nanoGPT's `data/openwebtext/prepare.py` does (Hugging
Face `datasets`, GPT-2 BPE + `<|endoftext|>` after each document, 0.05% val split, seed 2357).
Without the `datasets` package or without a route to the hub it fails within seconds with a
DataError that says what to do, instead of hanging; a cache prepared earlier opens offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import pickle
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from rtlab.data.base import MAX_UINT16_VOCAB, DataError, TokenDataset
from rtlab.data.cache import canonical_json, ensure_prepared, file_lock, verify
from rtlab.data.corpora import open_token_dataset, tokenizer_description
from rtlab.data.sources import sha256_bytes
from rtlab.data.tokenizer import GPT2_EOT, GPT2_VOCAB_SIZE, gpt2_encoding

HUB_TIMEOUT_S = 3.0
SCAN_CHUNK_TOKENS = 1 << 24


class _PlainUnpickler(pickle.Unpickler):
    """Loads only built-in containers and scalars: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_meta_pkl(path: Path) -> dict[str, Any]:
    """nanoGPT's meta.pkl ({'vocab_size', 'itos', 'stoi'}) without executing anything."""
    try:
        meta = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as err:  # any unpickling failure is a bad input, reported as one
        raise DataError(f"{path}: not a plain nanoGPT meta.pkl ({err})") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int):
        raise DataError(f"{path}: expected a dict with an int 'vocab_size'")
    itos = meta.get("itos")
    if itos is not None and not (
        isinstance(itos, dict)
        and all(isinstance(k, int) and isinstance(v, str) for k, v in itos.items())
    ):
        raise DataError(f"{path}: 'itos' must map int -> str")
    return meta


def scan_tokens(path: Path, data_dir: Path) -> dict[str, Any]:
    """{sha256, max_token, tokens} of a uint16 token file, cached by (path, size, mtime)."""
    stat = path.stat()
    key = str(path.resolve())
    stamp = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache_file = data_dir / "nanogpt_bin" / "scans.json"
    cache: dict[str, Any] = {}
    if cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except ValueError:
            cache = {}
    entry = cache.get(key)
    if entry and entry["stamp"] == stamp:
        return entry
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    digest = hashlib.sha256()
    max_token = 0
    for start in range(0, len(tokens), SCAN_CHUNK_TOKENS):
        chunk = np.asarray(tokens[start : start + SCAN_CHUNK_TOKENS])
        digest.update(chunk.tobytes())
        max_token = max(max_token, int(chunk.max()))
    entry = {
        "stamp": stamp,
        "sha256": digest.hexdigest(),
        "max_token": max_token,
        "tokens": int(len(tokens)),
    }
    with file_lock(cache_file.with_suffix(".lock")):
        if cache_file.is_file():
            try:
                cache = json.loads(cache_file.read_text())
            except ValueError:
                cache = {}
        cache[key] = entry
        tmp = cache_file.with_name(f".scans.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, cache_file)
    return entry


def load_nanogpt_bin(options: dict[str, Any], data_dir: Path, force: bool = False) -> TokenDataset:
    if options.get("path") is None:
        raise DataError(
            "nanogpt_bin: option 'path' (a directory with train.bin, val.bin) is required"
        )
    directory = Path(options["path"]).expanduser().resolve()
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    files = {split: directory / f"{split}.bin" for split in ("train", "val")}
    for split, file in files.items():
        if not file.is_file():
            raise DataError(f"{file}: missing ({split} split)")
        size = file.stat().st_size
        if size == 0:
            raise DataError(f"{file}: empty file")
        if size % 2:
            raise DataError(f"{file}: {size} bytes is not a whole number of uint16 tokens")
    tokenizer = options.get("tokenizer")
    if tokenizer not in (None, "gpt2"):
        raise DataError(f"nanogpt_bin: tokenizer must be 'gpt2' or unset, got {tokenizer!r}")
    meta_pkl = directory / "meta.pkl"
    meta = read_meta_pkl(meta_pkl) if meta_pkl.is_file() else {}
    vocab_size = options.get("vocab_size")
    if meta:
        if vocab_size is not None and vocab_size != meta["vocab_size"]:
            raise DataError(
                f"nanogpt_bin: vocab_size {vocab_size} disagrees with {meta_pkl} "
                f"({meta['vocab_size']})"
            )
        vocab_size = meta["vocab_size"]
    elif vocab_size is None:
        if tokenizer != "gpt2":
            raise DataError(
                f"{directory}: no meta.pkl; give the option vocab_size "
                "(or tokenizer: gpt2 for GPT-2 BPE token files)"
            )
        vocab_size = GPT2_VOCAB_SIZE
    if not isinstance(vocab_size, int) or not 1 <= vocab_size <= MAX_UINT16_VOCAB + 1:
        raise DataError(f"nanogpt_bin: vocab_size must be an int in [1, 65536], got {vocab_size!r}")
    scans = {split: scan_tokens(file, data_dir) for split, file in files.items()}
    for split, scan in scans.items():
        if scan["max_token"] >= vocab_size:
            raise DataError(
                f"{files[split]}: token id {scan['max_token']} >= vocab_size {vocab_size}"
            )
    identity = {
        "dataset": "nanogpt_bin",
        "vocab_size": vocab_size,
        "tokenizer": tokenizer,
        "train_sha256": scans["train"]["sha256"],
        "val_sha256": scans["val"]["sha256"],
    }
    encode = decode = None
    if meta.get("itos"):
        itos: dict[int, str] = meta["itos"]
        stoi = {c: i for i, c in itos.items()}
        encode = lambda text: [stoi[c] for c in text]  # noqa: E731
        decode = lambda ids: "".join(itos[i] for i in ids)  # noqa: E731
    elif tokenizer == "gpt2":
        encoding = gpt2_encoding(data_dir)
        encode, decode = encoding.encode_ordinary, encoding.decode
    return TokenDataset(
        name="nanogpt_bin",
        fingerprint=sha256_bytes(canonical_json(identity).encode()),
        meta={
            "identity": identity,
            "directory": str(directory),
            "source": {"kind": "nanogpt_bin"},
            "sizes": {
                "train_tokens": scans["train"]["tokens"],
                "val_tokens": scans["val"]["tokens"],
                "vocab_size": vocab_size,
            },
        },
        vocab_size=vocab_size,
        files=files,
        encode=encode,
        decode=decode,
    )


def hub_endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def reachable(host: str, port: int, timeout: float = HUB_TIMEOUT_S) -> bool:
    """Can we open a TCP connection within `timeout` seconds (name lookup included)?"""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the whole attempt runs in a thread we stop waiting on.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def check_hub_access() -> None:
    """Fail fast (a few seconds at most) when OpenWebText cannot be fetched."""
    alternative = (
        "or prepare it elsewhere with nanoGPT's data/openwebtext/prepare.py and use "
        "dataset nanogpt_bin with path: <that directory>, tokenizer: gpt2"
    )
    if importlib.util.find_spec("datasets") is None:
        raise DataError(
            "openwebtext: needs the Hugging Face 'datasets' package "
            f"(pip install datasets) and access to the hub, {alternative}"
        )
    if os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return  # the user says the dataset is in the local Hugging Face cache
    host, port = hub_endpoint()
    if not reachable(host, port):
        raise DataError(
            f"openwebtext: the Hugging Face hub ({host}:{port}) is not reachable "
            f"within {HUB_TIMEOUT_S:.0f} s; {alternative}"
        )


def load_openwebtext(options: dict[str, Any], data_dir: Path, force: bool = False) -> TokenDataset:
    val_fraction = float(options["val_fraction"])
    identity = {
        "dataset": "openwebtext",
        "hf_dataset": "openwebtext",
        "val_fraction": val_fraction,
        "split_seed": int(options["split_seed"]),
        "tokenizer": tokenizer_description("gpt2"),
    }
    directory = data_dir / "openwebtext" / "gpt2"
    manifest, _ = verify(directory)
    if manifest is None or manifest["identity"] != identity or force:
        check_hub_access()

    def build(out: Path) -> dict[str, Any]:  # pragma: no cover - needs the hub
        import datasets  # type: ignore[import-not-found]

        encoding = gpt2_encoding(data_dir)
        raw = datasets.load_dataset("openwebtext", num_proc=int(options["num_proc"]))
        split = raw["train"].train_test_split(
            test_size=val_fraction, seed=int(options["split_seed"]), shuffle=True
        )
        split["val"] = split.pop("test")

        def tokenize(example: dict[str, Any]) -> dict[str, Any]:
            ids = encoding.encode_ordinary(example["text"]) + [GPT2_EOT]
            return {"ids": ids, "len": len(ids)}

        sizes: dict[str, int] = {}
        for name, dset in split.items():
            tokenized = dset.map(
                tokenize, remove_columns=["text"], num_proc=int(options["num_proc"])
            )
            total = int(np.sum(tokenized["len"], dtype=np.uint64))
            arr = np.memmap(out / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(total,))
            position = 0
            shards = 1024 if len(tokenized) >= 1024 else 1
            for shard in range(shards):
                part = tokenized.shard(num_shards=shards, index=shard, contiguous=True)
                part = part.with_format("numpy")
                ids = np.concatenate(part["ids"])
                arr[position : position + len(ids)] = ids
                position += len(ids)
            arr.flush()
            sizes[f"{name}_tokens"] = total
            sizes[f"{name}_documents"] = len(tokenized)
        return {
            "source": {
                "kind": "huggingface",
                "dataset": "openwebtext",
                "datasets_version": datasets.__version__,
            },
            "inputs": {},
            "sizes": {**sizes, "vocab_size": GPT2_VOCAB_SIZE},
            "tokenizer": tokenizer_description("gpt2"),
        }

    manifest = ensure_prepared(directory, identity, build, force=force)
    return open_token_dataset("openwebtext", directory, manifest, data_dir)

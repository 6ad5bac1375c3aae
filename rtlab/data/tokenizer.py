"""Tokenizers: characters (vocabulary = the sorted set of characters, as nanoGPT) and GPT-2 BPE.

The GPT-2 BPE is tiktoken's, built offline from the `gpt2.tiktoken` ranks file that the pinned
`openai-whisper` sdist ships (checked by sha256), with GPT-2's split pattern and
`<|endoftext|>` = 50256.
tiktoken's own `get_encoding("gpt2")` would download from the internet: rtlab never calls it.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

import numpy as np
import tiktoken

from rtlab.data.base import MAX_UINT16_VOCAB, DataError
from rtlab.data.sources import GPT2_RANKS_MEMBER, WHISPER, fetch_sdist, read_members

# GPT-2's pre-tokenisation regex (tiktoken_ext.openai_public.r50k_pat_str), copied so that no
# plugin lookup is needed.
GPT2_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
GPT2_EOT = 50256
GPT2_VOCAB_SIZE = 50257
# Known encodings: the check that the ranks file and the pattern are GPT-2's.
GPT2_KNOWN = {"Hello world": [15496, 995], " the": [262], "<|endoftext|>": [GPT2_EOT]}


class CharTokenizer:
    """Character-level tokenizer over a fixed vocabulary string."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise DataError("character vocabulary has duplicates")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise DataError(f"character {err.args[0]!r} is not in the vocabulary") from err

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encode of a whole corpus to uint16 (every character must be in the vocab)."""
        if self.vocab_size > MAX_UINT16_VOCAB:
            raise DataError(f"{self.vocab_size} characters do not fit uint16 token storage")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        order = np.argsort(self._codepoints)
        sorted_codes = self._codepoints[order]
        pos = np.searchsorted(sorted_codes, codes)
        pos = np.minimum(pos, len(sorted_codes) - 1)
        if not np.array_equal(sorted_codes[pos], codes):
            bad = chr(int(codes[np.flatnonzero(sorted_codes[pos] != codes)[0]]))
            raise DataError(f"character {bad!r} is not in the vocabulary")
        return order[pos].astype(np.uint16)

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def parse_tiktoken_ranks(raw: bytes) -> dict[bytes, int]:
    """Parse a `.tiktoken` ranks file: one 'base64(token) rank' per line."""
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def gpt2_from_ranks(ranks: dict[bytes, int]) -> tiktoken.Encoding:
    encoding = tiktoken.Encoding(
        name="gpt2-rtlab",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
    for text, expected in GPT2_KNOWN.items():
        got = encoding.encode(text, allowed_special={"<|endoftext|>"})
        if got != expected:
            raise DataError(f"GPT-2 BPE check failed: {text!r} -> {got}, expected {expected}")
    return encoding


@lru_cache(maxsize=4)
def gpt2_encoding(data_dir: Path) -> tiktoken.Encoding:
    """GPT-2 BPE from the pinned whisper sdist under data_dir/sources (fetched once)."""
    sdist_path = fetch_sdist(WHISPER, data_dir)
    raw = read_members(WHISPER, sdist_path, [GPT2_RANKS_MEMBER])[GPT2_RANKS_MEMBER]
    return gpt2_from_ranks(parse_tiktoken_ranks(raw))


def gpt2_ranks_sha256() -> str:
    return WHISPER.members[GPT2_RANKS_MEMBER]

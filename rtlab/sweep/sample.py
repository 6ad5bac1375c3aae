"""`rtlab sample RUN`: text from a run's checkpoint, found through MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml


class SampleError(ValueError):
    """The run, its checkpoint or its data cannot be found or used (message names which)."""


def find_run(client: Any, run_ref: str) -> Any:
    """A child run by run id, config hash (or its prefix) or run name, in any experiment."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_ref)
    except MlflowException:
        pass
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        raise SampleError(f"{run_ref}: no experiments in the store")
    matches = []
    for run in client.search_runs(experiment_ids, filter_string="tags.`rtlab.role` = 'child'",
                                  max_results=50000):
        tags = run.data.tags
        if tags.get("rtlab.config_hash", "").startswith(run_ref) or (
            run.info.run_name == run_ref
        ):
            matches.append(run)
    if not matches:
        raise SampleError(f"{run_ref}: no run with this id, config hash or run name")
    if len(matches) > 1:
        names = ", ".join(f"{r.info.run_name} ({r.info.run_id[:8]})" for r in matches[:5])
        raise SampleError(f"{run_ref}: ambiguous, matches {names}; give a run id")
    return matches[0]


def data_section_of(client: Any, run: Any) -> dict[str, Any]:
    """The run's `data:` section, from its params (`data.name`, `data.size`, ...)."""
    section = {
        key[len("data."):]: yaml.safe_load(value)
        for key, value in run.data.params.items()
        if key.startswith("data.")
    }
    if "name" not in section:
        raise SampleError(f"run {run.info.run_id}: no data.* params (not an rtlab run?)")
    return section


def checkpoint_of(client: Any, run: Any, download_dir: Path) -> Path:
    """The logged final checkpoint, else the run directory's latest one (unfinished runs)."""
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run.info.run_id, "checkpoint/ckpt.pt",
                                               str(download_dir)))
    except (MlflowException, OSError):
        pass
    from rtlab.sweep.queue import experiment_state_dir

    experiment = client.get_experiment(run.info.experiment_id).name
    local = experiment_state_dir(experiment) / "runs" / run.data.tags.get(
        "rtlab.config_hash", "?") / "ckpt.pt"
    if local.exists():
        return local
    raise SampleError(
        f"run {run.info.run_name} ({run.info.run_id}): no checkpoint (not logged as an artifact, "
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
    import torch
    from mlflow import MlflowClient

    from rtlab.data import DataError, load_data_section
    from rtlab.execute import load_checkpoint
    from rtlab.model import GPT, GPTConfig
    from rtlab.track import resolve_tracking_uri, store_exists

    uri = resolve_tracking_uri(tracking_uri)
    if not store_exists(uri):
        raise SampleError(f"no MLflow store at {uri}")
    client = MlflowClient(uri)
    run = find_run(client, run_ref)
    data = data_section_of(client, run)
    try:
        dataset = load_data_section(data)
    except DataError as error:
        raise SampleError(f"run {run.info.run_name}: data: {error}") from error
    if dataset.task != "lm":
        raise SampleError(f"run {run.info.run_name}: dataset '{dataset.name}' has no text")
    with tempfile.TemporaryDirectory(prefix="rtlab-sample-") as tmp:
        state = load_checkpoint(checkpoint_of(client, run, Path(tmp)))
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

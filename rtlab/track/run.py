"""One child run: create or resume it, log params/tags/metrics/artifacts, end it."""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag

from rtlab.config import RunConfig
from rtlab.plan import flatten_config
from rtlab.track.logger import MetricLogger
from rtlab.track.names import (
    ARM_TAG,
    CHECKPOINT_DIR,
    CHILD,
    CONFIG_ARTIFACT,
    DATA_FINGERPRINT_TAG,
    DEVICE_TAG,
    FAILURE_TAG,
    FLOPS_PER_TOKEN_PARAM,
    FLOPS_SEEN,
    GRID_POINT_TAG,
    HASH_TAG,
    METRICS_ARTIFACT,
    MLFLOW_PARENT_TAG,
    PHASE_TAG,
    ROLE_TAG,
    RUN_NOTE_TAG,
    SAMPLE_ARTIFACT,
    SEARCH_PARAMS_TAG,
    SEED_PARAM,
    SEED_TAG,
    SLOT_TAG,
    STATE_TAG,
    STUDY_TAG,
    TOKENS_SEEN,
    TRIAL_TAG,
    VAL_LOSS,
)
from rtlab.track.provenance import provenance_tags
from rtlab.track.store import ExperimentHandle, run_note

MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 5000


def config_params(run: RunConfig) -> dict[str, str]:
    """The run's params: its resolved {data, model, train} under dotted keys
    (`rtlab.plan.flatten_config`) and its seed, as strings; lists become JSON so the string
    says exactly what was run."""
    params = {
        key: json.dumps(value) if isinstance(value, list | tuple) else str(value)
        for key, value in flatten_config(run.sections()).items()
    }
    return {**params, SEED_PARAM: str(run.seed)}


def child_tags(run: RunConfig, device: str) -> dict[str, str]:
    return {
        ROLE_TAG: CHILD,
        ARM_TAG: run.arm,
        SEED_TAG: str(run.seed),
        GRID_POINT_TAG: json.dumps(run.grid_point, sort_keys=True),
        HASH_TAG: run.config_hash,
        **({DATA_FINGERPRINT_TAG: run.data_fingerprint} if run.data_fingerprint else {}),
        DEVICE_TAG: device,
        **provenance_tags(),
        **search_tags(run),
    }


def search_tags(run: RunConfig) -> dict[str, str]:
    """A searched experiment's runs: their phase, study, trial slot and sampled values."""
    if run.phase is None:
        return {}
    tags = {PHASE_TAG: run.phase,
            SEARCH_PARAMS_TAG: json.dumps(run.search_params, sort_keys=True)}
    if run.study is not None:
        tags[STUDY_TAG] = run.study
    if run.phase == "tune" and run.trial is not None:
        tags[SLOT_TAG] = str(run.trial)
    if run.phase == "confirm" and run.trial is not None:
        tags[TRIAL_TAG] = str(run.trial)  # the best trial, whose config it reruns
    return tags


class EvalCounters:
    """tokens_seen and flops_seen at the evaluation steps that are not log steps too (step 0
    always), so MLflow can chart val_loss against them: its metric x axis pairs values logged
    at the same step. Tokens follow from the batch geometry, FLOPs from the FLOPs per token of
    the last log step (left out until one was logged, except at step 0)."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_token: float | None = None

    def fill(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        tokens = metrics.get(TOKENS_SEEN)
        if tokens and FLOPS_SEEN in metrics:
            self.flops_per_token = metrics[FLOPS_SEEN] / tokens
        if VAL_LOSS not in metrics or tokens is not None:
            return metrics
        seen = float(step * self.tokens_per_step)
        filled = {**metrics, TOKENS_SEEN: seen}
        if step == 0 or self.flops_per_token is not None:
            filled[FLOPS_SEEN] = seen * (self.flops_per_token or 0.0)
        return filled


class ChildRun:
    """A child run of the experiment's parent, identified by config hash.

    `open` resumes the live run with the same hash (a killed or failed one) instead of starting a
    second run; the metric logger then skips every step the store already has.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, resumed: bool, skip_through: dict[str, int]
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.resumed = resumed
        self.metrics = MetricLogger(client, run_id, skip_through)
        self.counters: EvalCounters | None = None  # set by `open`

    @classmethod
    def open(
        cls,
        handle: ExperimentHandle,
        run: RunConfig,
        *,
        device: str,
        existing_run_id: str | None = None,
    ) -> ChildRun:
        """Start the run, or resume `existing_run_id` (its params logged so far are kept)."""
        client = MlflowClient(handle.tracking_uri)
        tags = child_tags(run, device)
        params = config_params(run)
        if existing_run_id is not None:
            logged = client.get_run(existing_run_id).data
            client.update_run(existing_run_id, status="RUNNING")
            self = cls(client, existing_run_id, True,
                       last_logged_steps(client, existing_run_id, logged.metrics))
            self._log_params_and_tags(
                {k: v for k, v in params.items() if k not in logged.params}, tags
            )
        else:
            # A first description; `describe_children` adds what differs from the baseline arm
            # when the sweep ends and every arm's params are in the store.
            note = run_note(run.arm, str(run.seed), tags[GRID_POINT_TAG])
            created = client.create_run(
                handle.experiment_id,
                run_name=run.run_name,
                tags={MLFLOW_PARENT_TAG: handle.parent_run_id, RUN_NOTE_TAG: note, **tags},
            )
            self = cls(client, created.info.run_id, False, {})
            self._log_params_and_tags(params, {})
        self.counters = EvalCounters(run.train.tokens_per_step * run.model.block_size)
        return self

    def _log_params_and_tags(self, params: dict[str, str], tags: dict[str, str]) -> None:
        items = [Param(k, v[:MAX_PARAM_VALUE]) for k, v in params.items()]
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, max(len(items), 1), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(
                self.run_id,
                params=items[start : start + MAX_PARAMS_PER_BATCH],
                tags=run_tags if start == 0 else [],
                synchronous=True,
            )

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        metrics = dict(metrics)
        if self.counters is not None:
            metrics = self.counters.fill(step, metrics)
        self.metrics.log(step, metrics)

    def flush_metrics(self) -> None:
        """Block until every metric logged so far is in the store."""
        self.metrics.flush()

    def log_param(self, key: str, value: Any) -> None:
        existing = self.client.get_run(self.run_id).data.params
        if key not in existing:
            self.client.log_param(self.run_id, key, str(value))

    def log_result(
        self,
        run: RunConfig,
        *,
        flops_per_token: float,
        sample_text: str | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        """What a finished run leaves: its FLOPs per token, config.yaml, metrics.csv (the store's
        own histories: exact after a resume), sample.txt and checkpoint/ckpt.pt."""
        self.log_param(FLOPS_PER_TOKEN_PARAM, flops_per_token)
        self.flush_metrics()
        with tempfile.TemporaryDirectory(prefix="rtlab-artifacts-") as tmp:
            tmp_dir = Path(tmp)
            config_path = tmp_dir / CONFIG_ARTIFACT
            config_path.write_text(yaml.safe_dump(run.sections(), sort_keys=False))
            self.client.log_artifact(self.run_id, str(config_path))
            metrics_path = tmp_dir / METRICS_ARTIFACT
            write_metrics_csv(self.client, self.run_id, metrics_path)
            self.client.log_artifact(self.run_id, str(metrics_path))
            if sample_text is not None:
                sample_path = tmp_dir / SAMPLE_ARTIFACT
                sample_path.write_text(sample_text)
                self.client.log_artifact(self.run_id, str(sample_path))
        if checkpoint is not None and checkpoint.exists():
            self.client.log_artifact(self.run_id, str(checkpoint), artifact_path=CHECKPOINT_DIR)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:MAX_TAG_VALUE])
                                                 for k, v in tags.items()], synchronous=True)

    def finish(
        self, status: str, failure_reason: str | None = None, state: str | None = None
    ) -> None:
        """Flush metrics, then end the run: FINISHED, FAILED (with a reason) or KILLED; `state`
        (a searched experiment's runs) tells a pruned run from one stopped to be resumed."""
        self.metrics.close()
        if failure_reason is not None:
            self.client.set_tag(self.run_id, FAILURE_TAG, failure_reason[:MAX_TAG_VALUE])
        if state is not None:
            self.client.set_tag(self.run_id, STATE_TAG, state)
        self.client.set_terminated(self.run_id, status)

    def abandon(self) -> None:
        """Stop logging to a run another worker has taken over: its status, metrics and
        checkpoints are the new owner's, so nothing still queued here is written."""
        self.metrics.close(write_pending=False)


def last_logged_steps(
    client: MlflowClient, run_id: str, keys: Mapping[str, float] | list[str]
) -> dict[str, int]:
    """The highest step already logged per metric key."""
    return {
        key: max(metric.step for metric in history)
        for key in keys
        if (history := client.get_metric_history(run_id, key))
    }


def write_metrics_csv(client: MlflowClient, run_id: str, path: Path) -> None:
    """One row per step, one column per metric (blank where a metric was not logged)."""
    keys = sorted(client.get_run(run_id).data.metrics)
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for metric in client.get_metric_history(run_id, key):
            rows.setdefault(metric.step, {})[key] = metric.value
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", *keys])
        writer.writeheader()
        for step in sorted(rows):
            writer.writerow({"step": step, **rows[step]})

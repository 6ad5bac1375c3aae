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

from rtlab.plan import flatten_config
from rtlab.track.logger import MetricLogger
from rtlab.track.provenance import provenance_tags
from rtlab.track.store import HASH_TAG, PARENT_TAG, ROLE_TAG, ExperimentHandle

MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys (`rtlab.plan.flatten_config`), string
    values; lists become JSON so the string says exactly what was run."""
    return {
        key: json.dumps(value) if isinstance(value, list | tuple) else str(value)
        for key, value in flatten_config(config).items()
    }


def child_tags(
    *, arm: str, seed: int, grid_point: Mapping[str, Any], config_hash: str, device: str
) -> dict[str, str]:
    return {
        ROLE_TAG: "child",
        "rtlab.arm": arm,
        "rtlab.seed": str(seed),
        "rtlab.grid_point": json.dumps(dict(grid_point), sort_keys=True),
        HASH_TAG: config_hash,
        "rtlab.device": device,
        **provenance_tags(),
    }


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

    @classmethod
    def open(
        cls,
        handle: ExperimentHandle,
        *,
        run_name: str,
        arm: str,
        seed: int,
        grid_point: Mapping[str, Any],
        config_hash: str,
        config: Mapping[str, Any],
        device: str,
        existing_run_id: str | None = None,
    ) -> ChildRun:
        client = MlflowClient(handle.tracking_uri)
        tags = child_tags(
            arm=arm, seed=seed, grid_point=grid_point, config_hash=config_hash, device=device
        )
        params = {**config_params(config), "seed": str(seed)}
        if existing_run_id is not None:
            run = client.get_run(existing_run_id)
            client.update_run(existing_run_id, status="RUNNING")
            skip = last_logged_steps(client, existing_run_id, run.data.metrics)
            self = cls(client, existing_run_id, True, skip)
            new_params = {k: v for k, v in params.items() if k not in run.data.params}
            self._log_params_and_tags(new_params, tags)
            return self
        run = client.create_run(
            handle.experiment_id,
            run_name=run_name,
            tags={PARENT_TAG: handle.parent_run_id, **tags},
        )
        self = cls(client, run.info.run_id, False, {})
        self._log_params_and_tags(params, {})
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
        self.metrics.log(step, dict(metrics))

    def log_param(self, key: str, value: Any) -> None:
        existing = self.client.get_run(self.run_id).data.params
        if key not in existing:
            self.client.log_param(self.run_id, key, str(value))

    def log_artifacts(
        self,
        *,
        config: Mapping[str, Any],
        sample_text: str | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        """config.yaml, metrics.csv (the store's own histories: exact after a resume),
        sample.txt and checkpoint/ckpt.pt."""
        self.metrics.flush()
        with tempfile.TemporaryDirectory(prefix="rtlab-artifacts-") as tmp:
            tmp_dir = Path(tmp)
            config_path = tmp_dir / "config.yaml"
            config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
            self.client.log_artifact(self.run_id, str(config_path))
            metrics_path = tmp_dir / "metrics.csv"
            write_metrics_csv(self.client, self.run_id, metrics_path)
            self.client.log_artifact(self.run_id, str(metrics_path))
            if sample_text is not None:
                sample_path = tmp_dir / "sample.txt"
                sample_path.write_text(sample_text)
                self.client.log_artifact(self.run_id, str(sample_path))
        if checkpoint is not None and checkpoint.exists():
            self.client.log_artifact(self.run_id, str(checkpoint), artifact_path="checkpoint")

    def finish(self, status: str, failure_reason: str | None = None) -> None:
        """Flush metrics, then end the run: FINISHED, FAILED (with a reason) or KILLED."""
        self.metrics.close()
        if failure_reason is not None:
            self.client.set_tag(self.run_id, "rtlab.failure_reason", failure_reason[:5000])
        self.client.set_terminated(self.run_id, status)


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

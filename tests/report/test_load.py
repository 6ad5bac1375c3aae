"""MLflow -> the tidy frame: columns, statuses, duplicates, resumed steps, fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from rtlab.report.load import HISTORY_COLUMNS, load_experiment
from tests.helpers.report_store import KNOWN, RELOGGED_VAL, Store


def test_tidy_history_has_one_row_per_run_metric_step_with_tokens_and_flops(store: Store) -> None:
    data = load_experiment("known", store.uri)
    history = data.history
    assert list(history.columns) == HISTORY_COLUMNS
    assert not history.duplicated(["run_id", "metric", "step"]).any()
    # tokens/FLOPs attached to every row equal what the run logged at that step
    run_id = store.ids["known"]["reason1-s0"]
    client = MlflowClient(store.uri)
    logged_tokens = {m.step: m.value for m in client.get_metric_history(run_id, "tokens_seen")}
    logged_flops = {m.step: m.value for m in client.get_metric_history(run_id, "flops_seen")}
    val = history[(history["run_id"] == run_id) & (history["metric"] == "val_loss")]
    logged_val = client.get_metric_history(run_id, "val_loss")
    assert sorted(val["step"]) == sorted(m.step for m in logged_val)
    assert 0 in set(val["step"]) and 0 not in logged_tokens  # as the tracker logs them
    for _, row in val.iterrows():
        assert row["tokens"] == logged_tokens.get(row["step"], 0.0)  # step 0: nothing seen yet
        assert row["flops"] == logged_flops.get(row["step"], 0.0)
        assert row["arm"] == "reason1" and row["seed"] == 0


def test_runs_frame_keeps_every_run_with_status_and_excludes_unfinished(store: Store) -> None:
    runs = load_experiment("known", store.uri).runs
    expected_total = sum(len(v) for v in KNOWN.values()) + 3
    assert len(runs) == expected_total
    by_status = runs.groupby("status")["included"].agg(["count", "sum"])
    assert by_status.loc["FAILED"].tolist() == [1, 0]
    assert by_status.loc["KILLED"].tolist() == [1, 0]
    assert by_status.loc["RUNNING"].tolist() == [1, 0]
    assert by_status.loc["FINISHED"].tolist() == [expected_total - 3] * 2
    failed = runs[runs["status"] == "FAILED"].iloc[0]
    assert "TrainingDiverged" in failed["failure_reason"]


def test_duplicate_config_hash_counts_once_and_resumed_steps_keep_the_latest_value(
    store: Store,
) -> None:
    data = load_experiment("messy", store.uri)
    runs = data.runs
    twice = runs[runs["config_hash"] == "aaaaaaaaaaaa"]
    assert len(twice) == 2
    kept = twice[twice["included"]]
    assert len(kept) == 1 and kept.iloc[0]["final_val_loss"] == pytest.approx(3.6)  # the later
    assert any("repeat a config hash" in m for m in data.messages)
    history = data.history
    relogged = history[
        (history["run_id"] == store.ids["messy"]["reason1-s0"])
        & (history["metric"] == "val_loss") & (history["step"] == 20)
    ]
    assert relogged["value"].tolist() == [RELOGGED_VAL]


def test_missing_final_metric_falls_back_to_the_last_logged_value_with_a_note(
    store: Store,
) -> None:
    data = load_experiment("messy", store.uri)
    run = data.runs.set_index("run_name").loc["reason1-s1"]
    client = MlflowClient(store.uri)
    val = client.get_metric_history(store.ids["messy"]["reason1-s1"], "val_loss")
    last = max(val, key=lambda m: m.step).value
    assert run["final_val_loss"] == pytest.approx(last)
    assert run["best_val_loss"] == pytest.approx(min(m.value for m in val))
    assert any("no final_val_loss" in m and "reason1-s1" in m for m in data.messages)


def test_grid_point_tag_is_parsed(store: Store) -> None:
    runs = load_experiment("grid", store.uri).runs
    assert set(runs["grid_label"]) == {"learning_rate=0.001", "learning_rate=0.003"}
    assert all(json.loads(g) == grid for g, grid in zip(runs["grid_point"], runs["grid"],
                                                        strict=True))
    assert np.all(runs["included"])

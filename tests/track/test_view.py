"""What a fresh MLflow browser is given: the experiment's kind, description and runs view, each
child run's description, and tokens/FLOPs seen at every evaluation step."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from rtlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rtlab.track import ChildRun, finish_parent, runs_page_url, setup_experiment
from rtlab.track.run import EvalCounters
from rtlab.track.view import runs_view_state


def make_run(arm: str, seed: int = 0, **model) -> RunConfig:
    return RunConfig(experiment="exp", arm=arm, seed=seed, grid_point={"train.max_iters": 5},
                     data=DataConfig(name="tiny"), model=ModelConfig(n_layer=1, **model),
                     train=TrainConfig(max_iters=5))


def test_the_experiment_is_a_training_experiment_with_a_description_and_rtlabs_view(store):
    client = MlflowClient(store)
    client.create_experiment("exp")  # a store from before: no kind, no view
    handle = setup_experiment("exp", store, "what it tests")
    tags = client.get_experiment(handle.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "what it tests"
    assert json.loads(tags["mlflow.sharedViewState.rtlab"]) == runs_view_state()


def test_the_view_groups_by_arm_and_charts_the_losses_first():
    state = runs_view_state()
    keys = [key["groupByData"] for key in state["groupBy"]["groupByKeys"]]
    assert keys == ["rtlab.arm", "rtlab.grid_point"]
    charts = [(c["metricKey"], c["selectedXAxisMetricKey"]) for c in state["compareRunCharts"]]
    assert charts == [("val_loss", ""), ("train_loss", ""), ("val_loss", "tokens_seen"),
                      ("val_loss", "flops_seen")]


def test_runs_page_url_opens_the_model_training_chart_view_with_rtlabs_view():
    assert runs_page_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
        "&compareRunsMode=CHART&viewStateShareKey=rtlab")


def test_child_runs_say_their_arm_and_what_differs_from_the_baseline_arm(store):
    handle = setup_experiment("exp", store)
    client = MlflowClient(store)
    children = {}
    for run in (make_run("reasoning_1", reasoning={"n_tokens": 1}), make_run("baseline")):
        children[run.arm] = ChildRun.open(handle, run, device="cpu")
        children[run.arm].finish("FINISHED")
    note = client.get_run(children["reasoning_1"].run_id).data.tags["mlflow.note.content"]
    assert note == "reasoning_1, seed 0, train.max_iters = 5"  # until the sweep ends
    finish_parent(handle, "FINISHED")
    notes = {arm: client.get_run(child.run_id).data.tags["mlflow.note.content"]
             for arm, child in children.items()}
    assert notes == {
        "reasoning_1": "reasoning_1, seed 0, train.max_iters = 5: "
                       "model.reasoning.n_tokens = 1 (baseline: 0)",
        "baseline": "baseline, seed 0, train.max_iters = 5: the baseline arm",
    }


def test_evaluation_steps_get_tokens_and_flops_seen_for_mlflows_metric_x_axis():
    counters = EvalCounters(tokens_per_step=64)
    assert counters.fill(0, {"val_loss": 3.0}) == {"val_loss": 3.0, "tokens_seen": 0.0,
                                                   "flops_seen": 0.0}
    logged = {"batch_loss": 2.9, "tokens_seen": 640.0, "flops_seen": 6400.0}
    assert counters.fill(10, logged) == logged  # the trainer's own counters are kept
    assert counters.fill(15, {"val_loss": 2.8, "train_loss": 2.7}) == {
        "val_loss": 2.8, "train_loss": 2.7, "tokens_seen": 960.0, "flops_seen": 9600.0}
    assert EvalCounters(64).fill(15, {"val_loss": 2.8}) == {"val_loss": 2.8, "tokens_seen": 960.0}

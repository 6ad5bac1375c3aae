"""The report's Search section: per-arm budget and best configuration, edge-of-range flags, the
two all-arm figures; on a real searched experiment, comparisons use the confirm runs only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtlab.report.search import edge_flags, search_section, study_rows


def trial(number: int, state: str, lr: float, value: float | None, steps: int) -> dict:
    return {"number": number, "slot": number, "state": state, "counted": True, "value": value,
            "params": {"train.learning_rate": lr, "model.bias": number % 2 == 0},
            "intermediate": [[5, (value or 2.0) + 0.1]], "steps": steps, "tokens": steps * 10.0,
            "flops": steps * 1e6, "seconds": 1.0, "sample_seconds": 0.01, "prune_seconds": 0.0,
            "duplicate_of": None, "resume_of": None, "failure_reason": None,
            "config_hashes": [f"h{number}"], "run_ids": [f"r{number}"]}


def study(arm: str, best_lr: float) -> dict:
    trials = [trial(0, "complete", 1e-3, 2.0, 20), trial(1, "complete", best_lr, 1.5, 20),
              trial(2, "pruned", 0.2, None, 5), trial(3, "failed", 0.29, None, 3),
              {**trial(4, "failed", 0.1, None, 2), "counted": False}]
    return {
        "study": f"e/{arm}", "arm": arm, "grid_point": {}, "label": arm, "budget": 4,
        "objective": "final_val_loss", "sampler": {"type": "tpe", "seed": 0},
        "pruner": {"type": "median"}, "tune_seeds": [2], "confirm_seeds": [0, 1],
        "confirm_max_iters": None,
        "params": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 0.3,
                                           "log": True, "step": None},
                   "model.bias": {"type": "categorical", "choices": [True, False]}},
        "counts": {}, "trials": trials,
        "best": {"number": 1, "value": 1.5, "params": trials[1]["params"]},
    }


SUMMARY = {"format": 1, "storage": "sqlite:///x", "studies": [study("baseline", 3e-3),
                                                               study("myopic", 0.29)]}


def test_edge_flags_name_a_best_value_at_an_end_of_its_range():
    assert edge_flags(SUMMARY["studies"][0]) == []
    [flag] = edge_flags(SUMMARY["studies"][1])
    assert flag.startswith("train.learning_rate at the high end (0.29 of [0.0001, 0.3])")


def test_study_rows_count_the_budget_spent():
    rows = study_rows(SUMMARY).set_index("arm")
    base = rows.loc["baseline"]
    assert (base["done"], base["complete"], base["pruned"], base["failed"]) == (4, 2, 1, 1)
    assert base["steps"] == 48 and base["steps_unpruned"] == 80  # the dead trial not counted
    assert base["flops"] == pytest.approx(48e6)
    assert json.loads(base["best_params"])["train.learning_rate"] == 3e-3
    assert rows.loc["myopic", "edge"] and not base["edge"]


def test_search_section_writes_its_tables_figures_and_blocks(tmp_path: Path):
    section = search_section(SUMMARY, ["baseline", "myopic"], "baseline", tmp_path)
    assert [p.name for p in section.tables] == ["search.csv", "trials.csv"]
    assert all(p.exists() for p in section.tables)
    assert [f.stem for f in section.figures] == ["search_objective_vs_params", "search_history"]
    assert all(f.png.exists() and f.svg.exists() for f in section.figures)
    from rtlab.report import document as doc

    text = doc.to_markdown(section.blocks)
    assert "## Search" in text and "same budget of 4 trials" in text
    assert "| baseline | 4 / 4 | 2 / 1 / 1 | 48 (40% fewer than unpruned) |" in text
    assert "**myopic**: best train.learning_rate at the high end" in text


@pytest.mark.slow
def test_a_searched_experiment_reports_its_search_and_compares_confirm_runs(tmp_path,
                                                                           monkeypatch):
    from mlflow import MlflowClient

    from rtlab.report import build_report
    from rtlab.sweep import SweepOptions, prepare_experiment, run_sweep
    from tests.helpers.search_spec import TWO_ARMS, write_search_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RTLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    spec = write_search_spec(tmp_path, trials=4, variants=TWO_ARMS)
    run_sweep(prepare_experiment(spec), SweepOptions(workers=1, quiet=True))
    result = build_report(None, None, tmp_path / "reports", spec_path=spec, log_to_mlflow=False)
    text = result.report_md.read_text()
    assert "## Search" in text and "search_objective_vs_params.png" in text
    assert result.n_runs == 2  # the confirm runs; the 8 tuning runs are under Search only
    manifest = json.loads(result.manifest.read_text())
    assert {run["run_name"] for run in manifest["runs"]} == {"baseline-s1", "reasoning_1-s1"}
    assert "8 tuning run(s) are summarised under Search" in text

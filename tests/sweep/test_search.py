"""Searched experiments on real stores: every arm's study spends exactly its budget, pruned
trials end pruned in Optuna and MLflow, the confirm runs rerun each arm's best configuration, a
SIGKILLed search resumes to the same result, and two workers neither duplicate nor overrun."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from rtlab.config import StudyPlan
from rtlab.plan import trial_run
from rtlab.sweep import SweepOptions, prepare_experiment, run_sweep
from rtlab.sweep import optuna_adapter as adapter
from rtlab.sweep.queue import PID_ATTR, STALE_ATTR, default_storage_url, experiment_state_dir
from rtlab.sweep.search import (
    DUPLICATE_SLOT_ATTR,
    FAILURE_ATTR,
    PHASE_ATTR,
    PRUNED_AT_ATTR,
    RESUME_OF_ATTR,
    SLOT_ATTR,
    STOPPED_ATTR,
    SearchChanged,
    SearchStudies,
    counts_towards_budget,
    slot_of,
    slot_seed,
)
from rtlab.track.names import SEARCH_ARTIFACT
from tests.helpers.search_spec import TWO_ARMS, write_search_spec
from tests.helpers.tiny_spec import subprocess_env

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def studies_of(workdir: Path, name: str, plans: list[StudyPlan]) -> SearchStudies:
    url = default_storage_url(experiment_state_dir(name, workdir / ".rtlab"))
    return SearchStudies.open(url, [plan.study_name for plan in plans])


def new_studies(workdir: Path, trials: int) -> tuple[StudyPlan, SearchStudies]:
    """A one-arm search's study, created as `rtlab run` creates it, before any top-up."""
    prepared = prepare_experiment(write_search_spec(workdir, trials=trials))
    url = default_storage_url(experiment_state_dir("tiny_search", workdir / ".rtlab"))
    (workdir / ".rtlab" / "tiny_search").mkdir(parents=True)
    return prepared.studies[0], SearchStudies.create(url, prepared.studies)


def runs_by_phase(workdir: Path, name: str) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'")
    phases: dict[str, list] = {}
    for run in runs:
        phases.setdefault(run.data.tags.get("rtlab.phase"), []).append(run)
    return phases


def test_slot_seeds_are_shared_by_arms_and_differ_by_slot():
    assert slot_seed(0, 3) == slot_seed(0, 3)
    assert len({slot_seed(0, slot) for slot in range(50)}) == 50
    assert slot_seed(0, 1) != slot_seed(1, 1)


def test_a_search_prunes_logs_and_confirms_the_best(store_workdir):
    prepared = prepare_experiment(write_search_spec(store_workdir))
    summary = run_sweep(prepared, SweepOptions(workers=1, quiet=True))
    plan = prepared.studies[0]
    studies = studies_of(store_workdir, "tiny_search", prepared.studies)
    trials = studies.trials(plan.study_name)
    # Exactly the budget, every slot once, all finished; the pruner stopped some.
    assert sorted(slot_of(t) for t in trials) == [0, 1, 2, 3, 4]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [t.intermediate_values for t in trials]
    # Real Optuna trials: sampled through suggest (with their distribution), reported values.
    for trial in trials:
        assert set(trial.distributions) == {"train.learning_rate"}
        assert trial.intermediate_values and min(trial.intermediate_values) == 5
    for trial in pruned:
        assert max(trial.intermediate_values) < 20 and PRUNED_AT_ATTR in trial.user_attrs
    # MLflow: a child run per trial, pruned ones KILLED and tagged pruned; a FAILED one is not.
    phases = runs_by_phase(store_workdir, "tiny_search")
    tune = {run.data.tags["rtlab.trial"]: run for run in phases["tune"]}
    assert len(tune) == 5
    for trial in trials:
        run = tune[str(trial.number)]
        assert float(run.data.params["train.learning_rate"]) == trial.params["train.learning_rate"]
        assert json.loads(run.data.tags["rtlab.search_params"]) == trial.params
        if trial.state == TrialState.PRUNED:
            assert (run.info.status, run.data.tags["rtlab.state"]) == ("KILLED", "pruned")
            assert run.data.tags["rtlab.pruned_at_step"] == str(max(trial.intermediate_values))
        else:
            assert (run.info.status, run.data.tags["rtlab.state"]) == ("FINISHED", "finished")
    # The confirm phase reruns the argmin configuration on the confirm seeds.
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    expected = trial_run(plan, best.params, 1, phase="confirm", trial=best.number)
    [confirm] = phases["confirm"]
    assert confirm.data.tags["rtlab.config_hash"] == expected.config_hash
    assert confirm.info.status == "FINISHED" and confirm.data.tags["rtlab.trial"] == str(
        best.number)
    assert [r.config_hash for r in summary.confirm_runs] == [expected.config_hash]
    # search.json on the parent run says the same.
    client = MlflowClient(f"sqlite:///{store_workdir / 'mlflow.db'}")
    parent = client.get_run(confirm.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    logged = json.loads(client.download_artifacts(parent.info.run_id, SEARCH_ARTIFACT,
                                                  str(store_workdir)) and
                        (store_workdir / SEARCH_ARTIFACT).read_text())
    [study] = logged["studies"]
    assert study["best"]["number"] == best.number and study["budget"] == 5
    assert study["counts"]["pruned"] == len(pruned)
    assert sum(t["steps"] for t in study["trials"]) < 5 * 20  # pruning saved steps


def test_a_changed_search_is_refused_and_force_starts_afresh(store_workdir):
    spec = write_search_spec(store_workdir, trials=2)
    run_sweep(prepare_experiment(spec), SweepOptions(workers=1, quiet=True))
    changed = ["search.params.train.learning_rate.high=0.1"]
    with pytest.raises(SearchChanged, match="--force"):
        run_sweep(prepare_experiment(spec, changed), SweepOptions(workers=1, quiet=True))
    more = prepare_experiment(spec, ["search.trials=3"])  # a bigger budget continues the study
    summary = run_sweep(more, SweepOptions(workers=1, quiet=True))
    [study] = summary.search["studies"]
    assert study["budget"] == 3 and len(study["trials"]) == 3
    prepared = prepare_experiment(spec, changed)
    summary = run_sweep(prepared, SweepOptions(workers=1, quiet=True, force=True))
    [study] = summary.search["studies"]
    assert len(study["trials"]) == 2
    assert all(t["params"]["train.learning_rate"] <= 0.1 for t in study["trials"])


def test_dead_and_stopped_trials_are_enqueued_again_with_their_values(store_workdir):
    plan, studies = new_studies(store_workdir, trials=3)
    assert studies.top_up() == 3
    first = studies.claim()
    assert first is not None and first.slot == 0
    study = studies.study(plan.study_name)
    trial = optuna.Trial(study, first.trial_id)
    trial.suggest_float("train.learning_rate", 1e-4, 0.3, log=True)
    trial.report(2.5, 5)
    studies.storage.set_trial_system_attr(first.trial_id, "rtlab.pid", 2**22 + 12345)  # dead
    second = studies.claim()
    assert second is not None and second.slot == 1
    studies.storage.set_trial_system_attr(second.trial_id, STOPPED_ATTR, True)
    studies.storage.set_trial_state_values(second.trial_id, TrialState.FAIL)
    again = studies.recover()
    assert sorted(n for _, n in again) == [first.number, second.number]
    trials = studies.trials(plan.study_name)
    counted = [t for t in trials if counts_towards_budget(t)]
    assert sorted(slot_of(t) for t in counted) == [0, 1, 2] and len(trials) == 5
    assert studies.top_up() == 3  # nothing added: every slot has its trial
    resumed = studies.claim()
    assert resumed is not None and (resumed.slot, resumed.resume_of) == (0, first.number)
    claimed = studies.trial_by_number(plan.study_name, resumed.number)
    assert claimed.user_attrs[RESUME_OF_ATTR] == first.number


@pytest.mark.slow
def test_a_tuning_trial_taken_over_stops_and_tells_nothing(store_workdir):
    """A starved heartbeat looks like a dead worker: another worker (or a restarted `rtlab run`)
    fails the trial and enqueues it again. The first worker stops at its next beat or report and
    tells nothing: the trial stays failed-as-stale, its MLflow run is the new owner's."""
    from rtlab.sweep.tune import TuneTrial
    from rtlab.sweep.worker import LOST_REASON, Worker, WorkerConfig

    prepared = prepare_experiment(write_search_spec(store_workdir, trials=1, max_iters=5000,
                                                    checkpoint_interval=50))
    queued = run_sweep(prepared, SweepOptions(workers=0, quiet=True))
    plan = prepared.studies[0]
    config = WorkerConfig(storage_url=queued.storage_url, study_name="tiny_search",
                          state_dir=str(experiment_state_dir("tiny_search")),
                          heartbeat_seconds=0.2)
    elsewhere = studies_of(store_workdir, "tiny_search", prepared.studies)
    enqueued_again: list = []

    def judge_stale_once(message) -> None:  # what recover() does to a trial it finds stale
        if (isinstance(message, dict) and message["type"] == "step" and message["step"] > 0
                and not enqueued_again):
            (trial,) = elsewhere.trials(plan.study_name, TrialState.RUNNING)
            trial_id = adapter.trial_id(elsewhere.storage, elsewhere.ids[plan.study_name],
                                        trial)
            elsewhere.storage.set_trial_system_attr(trial_id, STALE_ATTR, True)
            elsewhere.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            enqueued_again.extend(elsewhere.recover())

    worker = Worker(config, judge_stale_once, lambda: False)
    claimed = worker.search.claim(config.heartbeat_seconds)
    (outcome,) = TuneTrial(worker, worker.search, claimed).run()

    assert enqueued_again == [(plan.study_name, claimed.number)]
    assert outcome.status == "LOST" and outcome.failure_reason == LOST_REASON
    assert 0 < outcome.steps < 5000  # it stopped within a beat or so, not at the end
    dead = elsewhere.trial_by_number(plan.study_name, claimed.number)
    assert dead.state == TrialState.FAIL and dead.system_attrs[STALE_ATTR] is True
    assert STOPPED_ATTR not in dead.system_attrs and FAILURE_ATTR not in dead.user_attrs
    again = elsewhere.trial_by_number(plan.study_name, claimed.number + 1)
    assert again.state == TrialState.WAITING and again.user_attrs[RESUME_OF_ATTR] == dead.number
    (run,) = runs_by_phase(store_workdir, "tiny_search")["tune"]
    assert run.info.status == "RUNNING"  # the new owner's to end


@pytest.mark.slow
def test_a_live_worker_reruns_a_dead_workers_tuning_trial_without_a_new_rtlab_run(
        store_workdir):
    from rtlab.sweep.worker import Worker, WorkerConfig

    prepared = prepare_experiment(write_search_spec(store_workdir, trials=2))
    queued = run_sweep(prepared, SweepOptions(workers=0, quiet=True))
    plan = prepared.studies[0]
    studies = studies_of(store_workdir, "tiny_search", prepared.studies)
    dead = studies.claim()  # a worker on this host claimed it and was SIGKILLed
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    studies.storage.set_trial_system_attr(dead.trial_id, PID_ATTR, int(gone.stdout))

    config = WorkerConfig(storage_url=queued.storage_url, study_name="tiny_search",
                          state_dir=str(experiment_state_dir("tiny_search")))
    outcomes = Worker(config, lambda message: None, lambda: False).run()

    assert len(outcomes) == 2 and studies.complete()
    trials = {t.number: t for t in studies.trials(plan.study_name)}
    assert trials[dead.number].state == TrialState.FAIL
    (resumed,) = [t for t in trials.values() if t.user_attrs.get(RESUME_OF_ATTR) == dead.number]
    assert resumed.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_a_live_workers_recovery_enqueues_dead_trials_not_stopped_ones(store_workdir):
    plan, studies = new_studies(store_workdir, trials=3)
    studies.top_up()
    dead, stopped = studies.claim(), studies.claim()
    studies.storage.set_trial_system_attr(dead.trial_id, PID_ATTR, 2**22 + 12345)
    studies.storage.set_trial_system_attr(stopped.trial_id, STOPPED_ATTR, True)
    studies.storage.set_trial_state_values(stopped.trial_id, TrialState.FAIL)
    assert studies.running_count() == 1  # the dead one (this process holds no trial)
    assert studies.recover_stale() == [(plan.study_name, dead.number)]
    assert studies.recover_stale() == []  # once
    assert studies.recover() == [(plan.study_name, stopped.number)]  # the next `rtlab run`


def test_recovery_enqueues_a_dead_trial_failed_by_a_process_that_did_not_enqueue_it(
        store_workdir):
    """A process that failed a stale trial and died (or lost its connection) before enqueueing
    it again leaves it to the next recovery; a trial its own worker failed with a reason counts
    even if it was taken for stale meanwhile."""
    plan, studies = new_studies(store_workdir, trials=2)
    studies.top_up()
    orphaned, failed = studies.claim(), studies.claim()
    for claimed in (orphaned, failed):
        studies.storage.set_trial_system_attr(claimed.trial_id, STALE_ATTR, True)
    studies.storage.set_trial_user_attr(failed.trial_id, FAILURE_ATTR, "diverged: loss is nan")
    for claimed in (orphaned, failed):
        studies.storage.set_trial_state_values(claimed.trial_id, TrialState.FAIL)
    assert studies.recover_stale() == [(plan.study_name, orphaned.number)]
    assert counts_towards_budget(studies.trial_by_number(plan.study_name, failed.number))


def test_a_slot_enqueued_twice_at_once_is_claimed_once(store_workdir):
    """PostgreSQL has no claim lock: two processes topping up (or recovering) at once may both
    enqueue a slot. The later trial is failed at its claim and never counts."""
    plan, studies = new_studies(store_workdir, trials=2)
    assert studies.top_up() == 2
    racing_top_up = {SLOT_ATTR: 0, PHASE_ATTR: "tune"}  # slot 0 again
    studies.study(plan.study_name).enqueue_trial({}, user_attrs=racing_top_up)
    claims = [studies.claim() for _ in range(3)]
    assert [c.slot for c in claims[:2]] == [0, 1] and claims[2] is None
    (twice,) = [t for t in studies.trials(plan.study_name) if not counts_towards_budget(t)]
    assert (twice.number, twice.state, slot_of(twice)) == (2, TrialState.FAIL, 0)
    assert twice.system_attrs[DUPLICATE_SLOT_ATTR] is True
    assert studies.recover() == []  # not a dead trial to run again
    # Had the slot's own trial died meanwhile, its slot would hold no counted trial: it is
    # enqueued again (the duplicate does not stand in for it).
    studies.storage.set_trial_system_attr(claims[0].trial_id, PID_ATTR, 2**22 + 12345)
    assert studies.recover_stale() == [(plan.study_name, claims[0].number)]


def _status_row(output: str, study: str) -> list[str]:
    row = next(line for line in output.splitlines() if f" {study} " in line)
    return [cell.strip() for cell in row.split("│")[1:-1]]


@pytest.mark.slow
def test_status_shows_each_study_then_the_confirm_runs(store_workdir):
    from typer.testing import CliRunner

    from rtlab.cli import app

    spec = write_search_spec(store_workdir, trials=3)
    cli = CliRunner()
    before = cli.invoke(app, ["status", str(spec)])
    assert before.exit_code == 0 and "not started" in before.output
    assert not (store_workdir / ".rtlab").exists()  # status creates nothing
    prepared = prepare_experiment(spec)
    run_sweep(prepared, SweepOptions(workers=0, quiet=True))  # the studies, nothing run yet
    queued = cli.invoke(app, ["status", str(spec)])
    columns = ["budget", "complete", "pruned", "failed", "running", "waiting", "best"]
    assert dict(zip(columns, _status_row(queued.output, "tiny_search/baseline")[1:8],
                    strict=True)) == {"budget": "3", "complete": "0", "pruned": "0",
                                      "failed": "0", "running": "0", "waiting": "3", "best": ""}
    assert "confirm runs:" in queued.output and "FINISHED" not in queued.output

    run_sweep(prepared, SweepOptions(workers=1, quiet=True))
    done = cli.invoke(app, ["status", str(spec)])
    cells = dict(zip(columns, _status_row(done.output, "tiny_search/baseline")[1:8], strict=True))
    assert int(cells["complete"]) + int(cells["pruned"]) == 3 and cells["waiting"] == "0"
    best = studies_of(store_workdir, "tiny_search", prepared.studies).best(
        prepared.studies[0].study_name)
    assert cells["best"] == f"{best.value:.4f}"
    assert _status_row(done.output, "baseline-s1")[0] == "FINISHED"  # the confirm run


def test_status_reads_the_studies_from_the_storage_it_is_given(store_workdir, tmp_path):
    from typer.testing import CliRunner

    from rtlab.cli import app

    spec = write_search_spec(store_workdir, trials=2)
    url = f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"  # another machine's database
    (tmp_path / "shared").mkdir()
    run_sweep(prepare_experiment(spec), SweepOptions(workers=0, quiet=True, storage_url=url))
    cli = CliRunner()
    local = cli.invoke(app, ["status", str(spec)])
    assert local.exit_code == 0 and "not started" in local.output
    shared = cli.invoke(app, ["status", str(spec), "--storage", url])
    assert shared.exit_code == 0, shared.output
    assert _status_row(shared.output, "tiny_search/baseline")[1:7] == ["2", "0", "0", "0", "0",
                                                                      "2"]
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    assert "not started" in cli.invoke(app, ["status", str(spec), "--storage", absent]).output
    assert not (tmp_path / "absent.db").exists()  # status creates nothing
    (tmp_path / "empty.db").touch()  # a database without Optuna's tables: an error, not written
    empty_url = f"sqlite:///{tmp_path / 'empty.db'}"
    empty = cli.invoke(app, ["status", str(spec), "--storage", empty_url])
    assert empty.exit_code == 2 and "cannot read the Optuna storage" in empty.output
    assert (tmp_path / "empty.db").stat().st_size == 0


@pytest.mark.slow
def test_two_workers_spend_exactly_the_budget_without_duplicates(store_workdir):
    prepared = prepare_experiment(write_search_spec(store_workdir, trials=6, variants=TWO_ARMS))
    summary = run_sweep(prepared, SweepOptions(workers=2, quiet=True))
    assert {o.worker for o in summary.outcomes} == {0, 1}
    studies = studies_of(store_workdir, "tiny_search", prepared.studies)
    for plan in prepared.studies:
        trials = studies.trials(plan.study_name)
        assert len(trials) == 6 and sorted(slot_of(t) for t in trials) == list(range(6))
        assert all(t.state in FINISHED for t in trials)
        hashes = [t.user_attrs["config_hashes"][0] for t in trials]
        assert len(set(hashes)) == 6, hashes
        assert len({t.params["train.learning_rate"] for t in trials}) == 6
    assert len(summary.confirm_runs) == 2


def _search_state(workdir: Path, plans: list[StudyPlan]) -> dict[str, list]:
    """Per study: (slot, state, params, value) of the trials that count, by slot; the best."""
    studies = studies_of(workdir, "tiny_search", plans)
    state = {}
    for plan in plans:
        counted = sorted((t for t in studies.trials(plan.study_name) if counts_towards_budget(t)),
                         key=slot_of)
        best = studies.best(plan.study_name)
        state[plan.study_name] = [
            [(slot_of(t), t.state.name, t.params, t.value, dict(t.intermediate_values))
             for t in counted],
            (best.params, best.value) if best else None,
        ]
    return state


def _rtlab_run(workdir: Path, spec: Path) -> subprocess.Popen:
    log = (workdir / "rtlab-run.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "rtlab.cli", "run", str(spec), "--workers", "1", "--quiet",
         "--no-check"],
        cwd=workdir, env=subprocess_env(workdir), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)


def _log_tail(workdir: Path) -> str:
    return (workdir / "rtlab-run.log").read_text()[-3000:]


def _running_with_values(workdir: Path) -> bool:
    """A trial is half way (RUNNING with reported values) after at least two have finished.
    Read with sqlite3, read-only: opening an Optuna storage writes (schema checks), which would
    race the sweep creating it."""
    database = experiment_state_dir("tiny_search", workdir / ".rtlab") / "optuna.db"
    if not database.exists():
        return False
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            finished = connection.execute(
                "SELECT COUNT(*) FROM trials JOIN studies USING (study_id) WHERE "
                "study_name != 'tiny_search' AND state IN ('COMPLETE', 'PRUNED', 'FAIL')"
            ).fetchone()[0]
            half_way = connection.execute(
                "SELECT COUNT(*) FROM trials t WHERE t.state = 'RUNNING' AND (SELECT COUNT(*) "
                "FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id) >= 2"
            ).fetchone()[0]
    except sqlite3.Error:  # not created yet, or busy: look again
        return False
    return finished >= 2 and half_way > 0


@pytest.mark.slow
def test_a_sigkilled_search_resumes_to_the_same_result(tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    specs = {}
    for workdir in (uninterrupted, killed):
        workdir.mkdir()
        specs[workdir] = write_search_spec(workdir, trials=5, max_iters=40,
                                           checkpoint_interval=10, variants=TWO_ARMS)
    assert _rtlab_run(uninterrupted, specs[uninterrupted]).wait(timeout=600) == 0, _log_tail(
        uninterrupted)
    process = _rtlab_run(killed, specs[killed])
    deadline = time.monotonic() + 300
    while not _running_with_values(killed):
        assert process.poll() is None and time.monotonic() < deadline, _log_tail(killed)
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert _rtlab_run(killed, specs[killed]).wait(timeout=600) == 0, _log_tail(killed)
    plans = prepare_experiment(specs[uninterrupted]).studies
    assert _search_state(killed, plans) == _search_state(uninterrupted, plans)
    studies = studies_of(killed, "tiny_search", plans)
    resumed = [t for p in plans for t in studies.trials(p.study_name)
               if RESUME_OF_ATTR in t.user_attrs]
    assert resumed, "the kill left no trial to resume"

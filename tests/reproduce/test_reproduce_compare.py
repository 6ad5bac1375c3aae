"""rtlab reproduce: manifest reading, run matching and verdicts, on real manifest files."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtlab.reproduce import (
    DIFFERS,
    IDENTICAL,
    MISSING,
    WITHIN,
    ReproduceError,
    RunResult,
    compare_runs,
    load_manifest,
)
from tests.helpers.reproduce import SPEC_TEXT, manifest_dict, write_report


def reproduced_from(manifest_runs: list[RunResult], **changes: dict) -> dict[str, RunResult]:
    """What a rerun would give: the recorded runs, with `changes[hash]` applied to metrics."""
    out = {}
    for run in manifest_runs:
        metrics = {**run.metrics, **changes.get(run.config_hash, {})}
        out[run.config_hash] = RunResult(
            run.config_hash, run.run_name, run.arm, run.seed, run.status, metrics
        )
    return out


def test_manifest_round_trip_keeps_every_bit(tmp_path: Path) -> None:
    manifest = load_manifest(write_report(tmp_path, manifest_dict()))
    assert manifest.experiment == "tiny"
    assert manifest.spec_text == SPEC_TEXT
    assert manifest.versions["torch"] == "2.13.0+cpu"
    assert [run.config_hash for run in manifest.runs] == ["0123456789ab", "ba9876543210"]
    # JSON floats must come back as the exact doubles written (bit-identity depends on it).
    assert manifest.runs[0].metrics["final_val_loss"] == 3.141592653589793
    assert manifest.runs[0].metrics["best_val_loss"] == 3.0000000000000004


def test_identical_rerun_is_identical(tmp_path: Path) -> None:
    manifest = load_manifest(write_report(tmp_path, manifest_dict()))
    comparison = compare_runs("tiny", manifest.runs, reproduced_from(manifest.runs), 0.0)
    assert comparison.verdict == IDENTICAL
    assert all(row.verdict == IDENTICAL for row in comparison.runs)
    assert len(comparison.runs[0].metrics) == 5


def test_one_ulp_differs_at_zero_tolerance_and_is_within_a_small_one(tmp_path: Path) -> None:
    manifest = load_manifest(write_report(tmp_path, manifest_dict()))
    nudged = reproduced_from(
        manifest.runs, **{"0123456789ab": {"final_val_loss": 3.1415926535897936}}
    )
    strict = compare_runs("tiny", manifest.runs, nudged, 0.0)
    assert strict.verdict == DIFFERS
    assert strict.runs[0].verdict == DIFFERS and strict.runs[1].verdict == IDENTICAL
    loose = compare_runs("tiny", manifest.runs, nudged, 1e-6)
    assert loose.verdict == WITHIN
    (row,) = [m for m in loose.runs[0].metrics if m.metric == "final_val_loss"]
    assert row.verdict == WITHIN and row.difference == pytest.approx(4.4e-16, rel=0.1)


def test_beyond_tolerance_differs(tmp_path: Path) -> None:
    manifest = load_manifest(write_report(tmp_path, manifest_dict()))
    moved = reproduced_from(manifest.runs, **{"ba9876543210": {"final_train_loss": 2.6}})
    assert compare_runs("tiny", manifest.runs, moved, 0.05).verdict == DIFFERS
    assert compare_runs("tiny", manifest.runs, moved, 0.2).verdict == WITHIN


def test_counts_ignore_the_loss_tolerance(tmp_path: Path) -> None:
    manifest = load_manifest(write_report(tmp_path, manifest_dict()))
    moved = reproduced_from(manifest.runs, **{"0123456789ab": {"tokens_seen": 40961.0}})
    assert compare_runs("tiny", manifest.runs, moved, 10.0).verdict == DIFFERS


def test_missing_and_extra_runs(tmp_path: Path) -> None:
    manifest = load_manifest(write_report(tmp_path, manifest_dict()))
    reproduced = reproduced_from(manifest.runs)
    extra = reproduced.pop("ba9876543210")
    reproduced["cccccccccccc"] = extra
    comparison = compare_runs("tiny", manifest.runs, reproduced, 0.0)
    assert comparison.verdict == MISSING
    verdicts = {row.config_hash: row.verdict for row in comparison.runs}
    assert verdicts == {"0123456789ab": IDENTICAL, "ba9876543210": MISSING, "cccccccccccc": DIFFERS}


def test_status_change_differs_even_with_equal_numbers(tmp_path: Path) -> None:
    manifest = load_manifest(write_report(tmp_path, manifest_dict()))
    reproduced = reproduced_from(manifest.runs)
    run = reproduced["0123456789ab"]
    reproduced["0123456789ab"] = RunResult(
        run.config_hash, run.run_name, run.arm, run.seed, "FAILED", run.metrics
    )
    comparison = compare_runs("tiny", manifest.runs, reproduced, 0.0)
    assert comparison.runs[0].verdict == DIFFERS
    assert "FINISHED -> FAILED" in comparison.runs[0].note


def test_null_metrics_on_both_sides_match(tmp_path: Path) -> None:
    data = manifest_dict()
    data["runs"][0]["best_val_loss"] = None  # JSON has no NaN: the report writes null
    manifest = load_manifest(write_report(tmp_path, data))
    assert manifest.runs[0].metrics["best_val_loss"] is None
    same = compare_runs("tiny", manifest.runs, reproduced_from(manifest.runs), 0.0)
    assert same.verdict == IDENTICAL
    appeared = reproduced_from(manifest.runs, **{"0123456789ab": {"best_val_loss": 3.0}})
    assert compare_runs("tiny", manifest.runs, appeared, 0.0).verdict == MISSING


def test_negative_tolerance_is_rejected(tmp_path: Path) -> None:
    manifest = load_manifest(write_report(tmp_path, manifest_dict()))
    with pytest.raises(ReproduceError, match="--tolerance"):
        compare_runs("tiny", manifest.runs, {}, -1.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"manifest.json:1:2: invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (manifest_dict(experiment=None), "key 'experiment'"),
        (manifest_dict(runs="many"), "key 'runs'"),
        (manifest_dict(runs=[{"run_name": "x"}]), r"key 'runs\[0\].config_hash'"),
        (manifest_dict(runs=[7]), r"key 'runs\[0\]': expected an object"),
    ],
)
def test_bad_manifests_name_file_and_key(tmp_path: Path, content: object, message: str) -> None:
    report_dir = write_report(tmp_path, content)
    with pytest.raises(ReproduceError, match=message) as raised:
        load_manifest(report_dir)
    assert str(report_dir / "manifest.json") in str(raised.value)


def test_repeated_config_hash_is_rejected(tmp_path: Path) -> None:
    data = manifest_dict()
    data["runs"][1]["config_hash"] = data["runs"][0]["config_hash"]
    with pytest.raises(ReproduceError, match="config hash repeated: 0123456789ab"):
        load_manifest(write_report(tmp_path, data))


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ReproduceError, match="not found"):
        load_manifest(tmp_path / "reports" / "nothing")

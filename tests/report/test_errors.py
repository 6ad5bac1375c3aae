"""Bad input: a clear ReportError, exit code 2 with one line from the command, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rtlab.cli import app
from rtlab.report import ReportError, build_report
from tests.helpers.report_store import Store


def test_missing_experiment_raises_and_names_what_is_there(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no experiment 'nope'.*'known'"):
        build_report("nope", store.uri, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    with pytest.raises(ReportError, match="does not exist"):
        build_report("x", f"sqlite:///{db}", tmp_path / "reports")
    assert not db.exists() and not (tmp_path / "reports").exists()


def test_cli_exits_2_with_one_line_for_a_missing_experiment(store: Store, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["report", "--experiment", "nope", "--tracking-uri", store.uri,
                "--out", str(tmp_path)],
    )
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no experiment 'nope'")
    assert "Traceback" not in result.output


def test_cli_exits_2_for_a_missing_spec_file_and_for_no_arguments(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2 and "absent.yaml: no such spec file" in result.stderr
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 2 and "--experiment" in result.stderr


def test_invalid_spec_error_is_passed_through_with_its_location(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nseeds: [0]\nbase: {data: {name: shakespeare_char}, model: {},"
                    " train: {}}\nvariants: {baseline: {}}\nbogus_key: 1\n")
    with pytest.raises(ReportError, match="bad.yaml"):
        build_report(None, "sqlite:///unused.db", tmp_path / "reports", spec_path=spec)
    assert not (tmp_path / "reports").exists()


def test_cli_writes_a_report_without_a_parent_run_and_says_so(
    store: Store, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app, ["report", "--experiment", "orphans", "--tracking-uri", store.uri,
                "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "orphans" / "report.html") in result.stdout
    assert (tmp_path / "orphans" / "manifest.json").exists()
    assert "note: no parent run (tag rtlab.role=parent): report artifacts are not logged." in (
        result.stderr)
    assert "logged to run" not in result.stdout

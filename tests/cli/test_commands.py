"""The command surface: help, mounted sub-commands, light import, `ui` without a store."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rtlab.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "validate", "check", "status", "ui", "sample", "worker", "data",
                    "report", "reproduce"):
        assert f" {command} " in result.output, command


@pytest.mark.slow
def test_importing_the_cli_loads_no_heavy_library():
    code = ("import sys, rtlab.cli; "
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mounted_data_command_runs_and_keeps_its_exit_codes(workdir):
    listing = runner.invoke(app, ["data", "list"])
    assert listing.exit_code == 0, listing.output
    assert "precache_discrete" in listing.output
    bad = runner.invoke(app, ["data", "prepare", "no_such_dataset"])
    assert bad.exit_code == 2
    assert "no_such_dataset" in bad.output


def test_mounted_report_command_shows_its_own_help():
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0
    assert "rtlab report" in result.output


def test_ui_without_a_store_is_exit_2_and_creates_nothing(workdir):
    result = runner.invoke(app, ["ui"])
    assert result.exit_code == 2
    assert "no MLflow store" in result.output
    assert not (workdir / "mlflow.db").exists()

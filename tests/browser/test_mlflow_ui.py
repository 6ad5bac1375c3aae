"""`rtlab ui` in a real browser: a fresh chromium profile opens the URL it prints and sees the
Model-training runs view of the experiment, grouped by arm, with every child run listed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers.servers import free_port, stop_process_group, wait_until_serving
from tests.helpers.tiny_spec import subprocess_env

pytestmark = pytest.mark.slow

CHART_AREA = "[data-testid='experiment-view-compare-runs-chart-area']"


def start_ui(workdir: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`rtlab ui tiny.yaml --port PORT` in its own process group; returns it and the runs URL
    it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rtlab.cli", "ui", "tiny.yaml", "--port", str(port)],
        cwd=workdir, env=subprocess_env(workdir), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    printed = []
    for line in process.stdout:
        printed.append(line)
        if line.startswith("runs: "):
            return process, line.removeprefix("runs: ").strip()
    stop_process_group(process)
    raise AssertionError("rtlab ui printed no runs URL:\n" + "".join(printed))


def child_runs(workdir: Path) -> dict[str, str]:
    """run id -> run name of the experiment's child runs, from the store."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'")
    return {run.info.run_id: run.info.run_name for run in runs}


def listed_runs(driver) -> dict[str, str]:
    """run id -> the text of its link, for every run link in the page's runs list."""
    links = driver.execute_script(
        "return [...document.querySelectorAll('a[href*=\"/runs/\"]')]"
        ".map(a => [a.getAttribute('href'), a.textContent.trim()])")
    return {href.rsplit("/runs/", 1)[1]: text for href, text in links if text}


def test_a_fresh_browser_opens_the_printed_url_on_the_training_runs_grouped_by_arm(
    study, browser, artifacts_dir
):
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    process, url = start_ui(study, port)
    try:
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/")
        wait_until_serving(f"http://127.0.0.1:{port}/", process)
        browser.get(url)
        children = child_runs(study)
        assert len(children) == 6
        WebDriverWait(browser, 90).until(lambda d: set(children) <= set(listed_runs(d)))
        listed = listed_runs(browser)
        assert {run_id: listed[run_id] for run_id in children} == children

        # The Model-training view (a GenAI view names this page "Training runs"), with the
        # experiment's description.
        headings = [h.text for h in browser.find_elements("css selector", "h2")]
        assert "Runs" in headings
        paragraphs = [p.text for p in browser.find_elements("css selector", "p")]
        assert "a tiny end-to-end test experiment" in paragraphs

        # rtlab's view: one group per arm, the loss charts before MLflow's alphabetical rest.
        groups = browser.execute_script(
            "return [...document.querySelectorAll('span[title^=\"rtlab.arm: \"]')]"
            ".map(s => s.getAttribute('title'))")
        assert {g.split(",")[0] for g in groups} == {
            "rtlab.arm: baseline", "rtlab.arm: reasoning_1", "rtlab.arm: myopic"}
        WebDriverWait(browser, 60).until(
            lambda d: "train_loss" in d.find_element("css selector", CHART_AREA).text)
        lines = browser.find_element("css selector", CHART_AREA).text.splitlines()
        first = lines.index("Add chart") + 1  # after the first section's header
        assert lines[first] == "val_loss"  # MLflow alone would start with batch_loss
        assert "batch_loss" not in lines[:lines.index("train_loss")]
        WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(
            "css selector", f"{CHART_AREA} .js-plotly-plot")) >= 3)  # the charts drawn
        time.sleep(1)
        browser.save_screenshot(str(artifacts_dir / "mlflow_runs.png"))
    finally:
        stop_process_group(process)
    assert process.poll() is not None

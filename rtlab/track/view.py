"""The MLflow runs view a fresh browser opens (`rtlab ui`): runs grouped by arm, losses first.

MLflow's runs page keeps its layout (grouping, charts) in the browser, so a new browser starts
from MLflow's defaults: one colour per run and one chart per metric in alphabetical order
(batch_loss first, val_loss last). MLflow's "Share" button saves a layout as the experiment tag
`mlflow.sharedViewState.<key>` and opens it from `#/experiments/<id>/runs?viewStateShareKey=<key>`;
rtlab writes such a tag itself. The JSON below is the state the MLflow 3.17 UI reads from it
(its field names); tests/browser checks in a real browser that the page opens with it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from rtlab.track.names import (
    ARM_TAG,
    FLOPS_SEEN,
    GRID_POINT_TAG,
    SHARED_VIEW_PARAM,
    SHARED_VIEW_TAG_PREFIX,
    TOKENS_SEEN,
    TRAIN_LOSS,
    VAL_LOSS,
    VIEW_KEY,
)

MODEL_SECTION = "Model metrics"  # MLflow's section for metric names without a "prefix/"
SECTION_ID = "rtlab-model-metrics"

# (chart id, metric, x axis metric or None for steps): the charts a researcher reads first;
# MLflow appends a chart for every other metric after them.
FIRST_CHARTS = (
    ("rtlab-val-loss", VAL_LOSS, None),
    ("rtlab-train-loss", TRAIN_LOSS, None),
    ("rtlab-val-loss-tokens", VAL_LOSS, TOKENS_SEEN),
    ("rtlab-val-loss-flops", VAL_LOSS, FLOPS_SEEN),
)


def line_chart(uuid: str, metric: str, x_metric: str | None) -> dict[str, Any]:
    """One line chart card: `metric` against steps, or against another metric's value at the
    same step (why tokens_seen and flops_seen are logged at every evaluation step)."""
    return {
        "uuid": uuid, "type": "LINE", "isGenerated": False, "deleted": False,
        "metricSectionId": SECTION_ID, "runsCountToCompare": 10,
        "metricKey": metric, "selectedMetricKeys": [metric],
        "displayName": metric if x_metric is None else f"{metric} vs {x_metric}",
        "xAxisKey": "step" if x_metric is None else "metric",
        "selectedXAxisMetricKey": x_metric or "", "useGlobalXaxisKey": x_metric is None,
        "scaleType": "linear", "xAxisScaleType": "linear", "lineSmoothness": 0,
        "useGlobalLineSmoothing": True, "range": {}, "yAxisKey": "metric",
        "yAxisExpressions": [], "ignoreOutliers": False,
    }


def runs_view_state() -> dict[str, Any]:
    """Group runs by arm and grid point (one line per arm: the seeds' mean with a min-max band;
    runs at other grid points are other configs), the loss charts first.

    Why the grid point too: besides being right for grids, MLflow colours a group by a checksum
    of its id, and by the arm alone "baseline" and "reasoning_1" get the same colour.
    `isReordered` makes MLflow append other metrics' charts after ours instead of sorting them
    in alphabetically; `isAccordionReordered` keeps our section first."""
    return {
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": ARM_TAG},
                                    {"mode": "tag", "groupByData": GRID_POINT_TAG}]},
        "useGroupedValuesInCharts": True,
        "compareRunSections": [{"uuid": SECTION_ID, "name": MODEL_SECTION, "display": True,
                                "isReordered": True, "deleted": False, "isGenerated": False}],
        "compareRunCharts": [line_chart(*chart) for chart in FIRST_CHARTS],
        "isAccordionReordered": True,
    }


def view_tag() -> tuple[str, str]:
    """The experiment tag that stores the view: (key, JSON value)."""
    return SHARED_VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(runs_view_state(), sort_keys=True)


def runs_page_url(server_url: str, experiment_id: str) -> str:
    """The experiment's runs page on an MLflow server at `server_url`: MLflow's Model-training
    mode (a new browser starts in GenAI mode), the chart view, and rtlab's view."""
    query = urlencode({"workflowType": "machine_learning", "compareRunsMode": "CHART",
                       SHARED_VIEW_PARAM: VIEW_KEY})
    return f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"

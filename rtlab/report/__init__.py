"""MLflow -> pandas -> figures, tables, report.md / report.html / manifest.json.

    from rtlab.report import build_report
    result = build_report("mini_sweep", "sqlite:///mlflow.db", Path("reports"))

`build_report` and `ReportResult` are imported on first use: they pull in pandas, scipy and
matplotlib, which `rtlab.report.errors` and `rtlab.report.status` readers do not need.
"""

from typing import Any

from rtlab.report.errors import ReportError

__all__ = ["ReportError", "ReportResult", "build_report"]


def __getattr__(name: str) -> Any:
    if name in ("ReportResult", "build_report"):
        from rtlab.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'rtlab.report' has no attribute {name!r}")

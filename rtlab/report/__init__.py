"""MLflow -> pandas -> figures, tables, report.md / report.html / manifest.json.

    from rtlab.report import build_report
    result = build_report("mini_sweep", "sqlite:///mlflow.db", Path("reports"))
"""

from rtlab.report.build import ReportResult, build_report
from rtlab.report.errors import ReportError

__all__ = ["ReportError", "ReportResult", "build_report"]

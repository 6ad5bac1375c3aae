"""The one error the report raises for bad input (CLI: one line, exit code 2)."""


class ReportError(Exception):
    """No such store or experiment, an unreadable spec, or nothing to report."""

"""What `rtlab run` shows while it works: rich progress bars, or plain log lines (--quiet)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

Event = dict[str, Any]


def _loss_text(metrics: dict[str, float]) -> str:
    parts = []
    if "batch_loss" in metrics:
        parts.append(f"loss {metrics['batch_loss']:.4f}")
    if "val_loss" in metrics:
        parts.append(f"val {metrics['val_loss']:.4f}")
    if "tokens_per_sec" in metrics:
        parts.append(f"{metrics['tokens_per_sec']:,.0f} tok/s")
    return " · ".join(parts)


class SweepDisplay:
    """Consumes worker events; the same events drive the bars and the plain log."""

    def __init__(self, total_runs: int, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=False)
        self.total_runs = total_runs
        self.ended: list[Event] = []
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._run_tasks: dict[int, TaskID] = {}
        self._start = time.monotonic()

    # ---- lifecycle
    def __enter__(self) -> SweepDisplay:
        if not self.quiet:
            self._progress = Progress(
                TextColumn("{task.description}", style="bold"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._overall = self._progress.add_task("runs", total=self.total_runs, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            self._log(message)

    def _log(self, message: str) -> None:
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:7.1f}s] {message}", file=sys.stdout, flush=True)

    # ---- events from workers
    def handle(self, event: Event) -> None:
        kind = event.get("type")
        worker = int(event.get("worker", 0))
        if kind == "start":
            resumed = " (resumed)" if event.get("resumed") else ""
            if self._progress is not None:
                old = self._run_tasks.pop(worker, None)
                if old is not None:
                    self._progress.remove_task(old)
                self._run_tasks[worker] = self._progress.add_task(
                    f"{event['run_name']}{resumed}", total=event.get("max_iters") or None, info=""
                )
            else:
                self._log(f"w{worker} start {event['run_name']}{resumed}")
        elif kind == "step":
            metrics = event.get("metrics", {})
            if self._progress is not None and worker in self._run_tasks:
                self._progress.update(
                    self._run_tasks[worker], completed=event["step"], info=_loss_text(metrics)
                )
            elif self._progress is None and event.get("eval"):
                self._log(f"w{worker} {event['run_name']} step {event['step']}: "
                          f"{_loss_text(metrics)}")
        elif kind in ("end", "skip"):
            self.ended.append(event)
            status = event.get("status", "SKIPPED")
            text = f"{status.lower()} {event['run_name']}"
            if event.get("final_val_loss") is not None:
                text += f" · final val loss {event['final_val_loss']:.4f}"
            if event.get("failure_reason"):
                text += f" · {event['failure_reason']}"
            if self._progress is not None:
                task = self._run_tasks.pop(worker, None)
                if task is not None:
                    self._progress.remove_task(task)
                assert self._overall is not None
                if status in ("FINISHED", "FAILED", "SKIPPED"):
                    self._progress.advance(self._overall)
                self._progress.console.print(text)
            else:
                self._log(f"w{worker} {text}")
        elif kind == "worker_error":
            self.note(f"worker {worker} crashed:\n{event.get('traceback', '')}")

"""What `rtlab run` shows while it works: rich progress bars, or plain log lines (--quiet).

The display only shows: the sweep summary takes each run's `RunOutcome` from the workers, not
from here.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from rtlab.sweep.outcome import Event, Message, RunOutcome
from rtlab.track.names import BATCH_LOSS, TOKENS_PER_SEC, VAL_LOSS


def _loss_text(metrics: dict[str, float]) -> str:
    parts = []
    if BATCH_LOSS in metrics:
        parts.append(f"loss {metrics[BATCH_LOSS]:.4f}")
    if VAL_LOSS in metrics:
        parts.append(f"val {metrics[VAL_LOSS]:.4f}")
    if TOKENS_PER_SEC in metrics:
        parts.append(f"{metrics[TOKENS_PER_SEC]:,.0f} tok/s")
    return " · ".join(parts)


class SweepDisplay:
    """Consumes what workers emit (events and outcomes); they drive the bars or the plain log."""

    def __init__(self, total_runs: int, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(stderr=False)
        self.total_runs = total_runs
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

    # ---- what workers emit
    def handle(self, message: Message) -> None:
        if isinstance(message, RunOutcome):
            self._ended(message)
            return
        kind = message.get("type")
        worker = int(message.get("worker", 0))
        if kind == "start":
            self._started(worker, message)
        elif kind == "step":
            self._stepped(worker, message)
        elif kind == "note":
            self.note(str(message.get("text", "")))
        elif kind == "worker_error":
            self.note(f"worker {worker} crashed:\n{message.get('traceback', '')}")

    def _started(self, worker: int, event: Event) -> None:
        resumed = " (resumed)" if event.get("resumed") else ""
        if self._progress is None:
            self._log(f"w{worker} start {event['run_name']}{resumed}")
            return
        old = self._run_tasks.pop(worker, None)
        if old is not None:
            self._progress.remove_task(old)
        self._run_tasks[worker] = self._progress.add_task(
            f"{event['run_name']}{resumed}", total=event.get("max_iters") or None, info=""
        )

    def _stepped(self, worker: int, event: Event) -> None:
        metrics = event.get("metrics", {})
        if self._progress is not None and worker in self._run_tasks:
            self._progress.update(
                self._run_tasks[worker], completed=event["step"], info=_loss_text(metrics)
            )
        elif self._progress is None and event.get("eval"):
            self._log(f"w{worker} {event['run_name']} step {event['step']}: "
                      f"{_loss_text(metrics)}")

    def _ended(self, outcome: RunOutcome) -> None:
        text = f"{outcome.status.lower()} {outcome.run_name}"
        if outcome.final_val_loss is not None:
            text += f" · final val loss {outcome.final_val_loss:.4f}"
        if outcome.failure_reason:
            text += f" · {outcome.failure_reason}"
        if outcome.pruned_at is not None and outcome.status == "PRUNED":
            text += f" · at step {outcome.pruned_at}"
        if self._progress is None:
            self._log(f"w{outcome.worker} {text}")
            return
        task = self._run_tasks.pop(outcome.worker, None)
        if task is not None:
            self._progress.remove_task(task)
        assert self._overall is not None
        if outcome.status not in ("KILLED", "LOST"):  # another worker, or sweep, ends it
            self._progress.advance(self._overall)
        self._progress.console.print(text)

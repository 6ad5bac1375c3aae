"""Batched metric logging on a background thread, so a slow store never stalls training."""

from __future__ import annotations

import math
import queue
import threading
import time
import warnings

from mlflow import MlflowClient
from mlflow.entities import Metric

# MLflow accepts at most 1000 metrics per log_batch call.
MAX_BATCH = 1000
_STOP = object()


class MetricLogger:
    """Queue metrics from the training thread; a daemon thread writes them with log_batch.

    `skip_through[key] = step` drops steps already in the store (a resumed run re-emits the
    steps between its last checkpoint and the kill): no metric step is ever logged twice.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        skip_through: dict[str, int] | None = None,
        max_retries: int = 8,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.skip_through = dict(skip_through or {})
        self.max_retries = max_retries
        self.dropped = 0  # metrics given up on after max_retries (reported, never silent)
        self.seconds_writing = 0.0  # time the writer thread spent in the store
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="rtlab-metrics", daemon=True)
        self._thread.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Non-blocking: filter, timestamp and enqueue."""
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if value is None or step <= self.skip_through.get(key, -1):
                continue
            value = float(value)
            if math.isnan(value) or math.isinf(value):
                continue  # a diverged run fails with a reason; the store gets finite numbers only
            self.skip_through[key] = step
            self._queue.put(Metric(key, value, timestamp, int(step)))

    def flush(self) -> None:
        """Block until everything queued so far is written (at checkpoints and at the end)."""
        self._queue.join()

    def close(self, write_pending: bool = True) -> None:
        """Stop the writer; the metrics still queued are written, or dropped when the run now
        belongs to another worker (`write_pending=False`)."""
        if not write_pending:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
                self._queue.task_done()
        self.flush()
        self._queue.put(_STOP)
        self._thread.join(timeout=60)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            batch = [item]
            stop_after = False
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop_after = True
                    break
                batch.append(more)
            self._write(batch)
            for _ in batch:
                self._queue.task_done()
            if stop_after:
                self._queue.task_done()
                return

    def _write(self, batch: list[Metric]) -> None:
        start = time.perf_counter()
        for attempt in range(self.max_retries):
            try:
                self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
                break
            except Exception as error:  # a busy SQLite store or a flaky server: retry
                if attempt == self.max_retries - 1:
                    self.dropped += len(batch)
                    warnings.warn(
                        f"rtlab: gave up logging {len(batch)} metrics to run {self.run_id}: "
                        f"{error}",
                        stacklevel=1,
                    )
                    break
                time.sleep(min(0.1 * 2**attempt, 5.0))
        self.seconds_writing += time.perf_counter() - start

"""Checkpoints in the MLflow artifact store, so that a run interrupted on one machine resumes on
another from its last checkpoint (the local run directory stays the fast path on one machine).

Atomic from the reader's side: a checkpoint goes to the slot the pointer does not name
(`resume/slot0|slot1/ckpt.pt`), and only after that upload completes is the pointer
(`resume/latest.json`: step, slot, sha256) rewritten. A reader follows the pointer and checks
the digest, so it gets the last complete checkpoint or none, never half of one. Two slots bound
the store's space to two checkpoints per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from rtlab.track.names import RESUME_DIR, RESUME_POINTER
from rtlab.track.records import download_artifact, read_text_artifact


def is_remote(tracking_uri: str) -> bool:
    """A tracking server (http[s]): workers may be on other machines, checkpoints must travel."""
    return tracking_uri.startswith(("http://", "https://"))


class CheckpointUploader:
    """Uploads each checkpoint of one run to the slot the pointer does not name."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        pointer = read_pointer(tracking_uri, run_id)
        self.slot = 1 - pointer["slot"] if pointer else 0

    def __call__(self, step: int, path: Path) -> None:
        digest = file_sha256(path)
        self.client.log_artifact(self.run_id, str(path), f"{RESUME_DIR}/slot{self.slot}")
        pointer = {"step": step, "slot": self.slot, "file": Path(path).name, "sha256": digest}
        self.client.log_text(self.run_id, json.dumps(pointer), RESUME_POINTER)
        self.slot = 1 - self.slot


def read_pointer(tracking_uri: str, run_id: str) -> dict | None:
    """The run's checkpoint pointer; None when it has none (or it is being rewritten)."""
    text = read_text_artifact(tracking_uri, run_id, RESUME_POINTER)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def download_checkpoint(tracking_uri: str, run_id: str, destination: Path) -> int | None:
    """Put the run's last complete uploaded checkpoint at `destination` (atomically); its step,
    or None when the run uploaded none (or the pointed file does not match its digest)."""
    pointer = read_pointer(tracking_uri, run_id)
    if pointer is None:
        return None
    path = f"{RESUME_DIR}/slot{pointer['slot']}/{pointer['file']}"
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".download-") as scratch:
        local = download_artifact(tracking_uri, run_id, path, Path(scratch))
        if local is None or file_sha256(local) != pointer["sha256"]:
            return None
        os.replace(local, destination)
    return int(pointer["step"])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

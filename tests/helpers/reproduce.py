"""Manifests in the shape rtlab report writes, for the reproduce tests."""

from __future__ import annotations

import json
from pathlib import Path

SPEC_TEXT = "name: tiny\nseeds: [1, 2]\n"


def manifest_dict(**overrides: object) -> dict:
    """A manifest in the shape rtlab report writes (ARCHITECTURE.md, report output)."""
    runs = [
        {
            "run_id": "a" * 32,
            "run_name": "baseline-s1",
            "arm": "baseline",
            "seed": 1,
            "grid_point": "",
            "config_hash": "0123456789ab",
            "status": "FINISHED",
            "included": True,
            "final_train_loss": 2.718281828459045,
            "final_val_loss": 3.141592653589793,
            "best_val_loss": 3.0000000000000004,
            "tokens_seen": 40960.0,
            "flops_seen": 123456789.0,
        },
        {
            "run_id": "b" * 32,
            "run_name": "reasoning_1-s1",
            "arm": "reasoning_1",
            "seed": 1,
            "grid_point": "",
            "config_hash": "ba9876543210",
            "status": "FINISHED",
            "included": True,
            "final_train_loss": 2.5,
            "final_val_loss": 2.9,
            "best_val_loss": 2.8,
            "tokens_seen": 40960.0,
            "flops_seen": 223456789.0,
        },
    ]
    data = {
        "experiment": "tiny",
        "spec_path": "experiments/tiny.yaml",
        "spec_text": SPEC_TEXT,
        "rtlab_version": "0.1.0",
        "python": "3.11.7",
        "torch": "2.13.0+cpu",
        "git_commit": "f" * 40,
        "git_dirty": False,
        "created": "2026-11-27T11:00:00Z",
        "tracking_uri": "sqlite:///mlflow.db",
        "runs": runs,
    }
    data.update(overrides)
    return data


def write_report(tmp_path: Path, data: object) -> Path:
    report_dir = tmp_path / "reports" / "tiny"
    report_dir.mkdir(parents=True)
    text = data if isinstance(data, str) else json.dumps(data, indent=2)
    (report_dir / "manifest.json").write_text(text)
    return report_dir

"""One tiny run trained by `rtlab.execute.train`, for the DDP tests: run it under torchrun
(`python -m torch.distributed.run --nproc-per-node N tests/helpers/ddp_train.py RUN_DIR OUT`) or
as one plain process. Rank 0 writes every reported metric to OUT (JSON). With `--kill-at STEP`,
rank 0 SIGKILLs itself right after writing that step's checkpoint (torchrun then ends the rest)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rtlab.config import RunConfig  # noqa: E402
from rtlab.data import load_data_section  # noqa: E402
from rtlab.execute import train  # noqa: E402
from rtlab.execute.distributed import current_ranks, leave_process_group  # noqa: E402
from tests.helpers.train_config import make_config  # noqa: E402

DATA = {"name": "precache_discrete", "n_digits": 3, "modulus": 5}


def ddp_run() -> RunConfig:
    """A global batch of 4 micro-batches x 4 sequences: 2 processes take 2 micro-batches each."""
    return make_config(data=DATA, max_iters=20, grad_accum=4, batch_size=4, sample_tokens=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()
    run = ddp_run()
    history: dict[int, dict[str, float]] = {}

    def on_checkpoint(step: int, path: Path) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = train(run, args.run_dir, load_data_section(run.data),
                   on_metrics=lambda step, metrics: history.setdefault(step, {}).update(metrics),
                   on_checkpoint=on_checkpoint)
    if int(os.environ.get("RANK", "0")) == 0:
        args.out.write_text(json.dumps({"history": history, "steps": result.steps,
                                        "resumed_from_step": result.resumed_from_step,
                                        "world": current_ranks().world}))
    leave_process_group()


if __name__ == "__main__":
    main()

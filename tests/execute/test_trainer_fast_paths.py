"""Bit-identical reruns and resumes where the CPU fast paths run: batches of at least
rtlab.model.linear.MIN_ROWS rows (the blocks' linears on oneDNN) and reasoning tokens with
delay 1 (unmasked causal attention). The other trainer tests use smaller batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtlab.data import Dataset
from rtlab.execute import train
from rtlab.model import linear
from tests.execute.test_trainer import assert_identical_runs
from tests.helpers.train_config import make_config

MODES = [{}, {"reasoning": {"n_tokens": 1, "delay": 1}}, {"myopic": "strict"}]


def fast_path_config(model: dict, **train: int):
    # 8 x 64 = 512 rows: the smallest batch on the oneDNN path
    fields = {"max_iters": 6, "eval_interval": 3, "eval_iters": 1, "checkpoint_interval": 2,
              "log_interval": 2, "sample_tokens": 8, **train}
    return make_config({"block_size": 64, **model}, seed=5, batch_size=8, **fields)


@pytest.mark.slow  # ~1 s per mode, two runs each
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_rerun_on_the_fast_paths_is_bit_identical(
    mode: dict, text_dataset: Dataset, tmp_path: Path
) -> None:
    assert 8 * 64 >= linear.MIN_ROWS
    config = fast_path_config(mode)
    first = train(config, run_dir=tmp_path / "a", dataset=text_dataset)
    second = train(config, run_dir=tmp_path / "b", dataset=text_dataset)
    assert_identical_runs(first, second, tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_resume_on_the_fast_paths_is_bit_identical(text_dataset: Dataset, tmp_path: Path) -> None:
    config = fast_path_config({"reasoning": {"n_tokens": 1, "delay": 1}})
    uninterrupted = train(config, run_dir=tmp_path / "a", dataset=text_dataset)
    polls = 0

    def stop_after_3_steps() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3

    stopped = train(config, run_dir=tmp_path / "b", dataset=text_dataset,
                    should_stop=stop_after_3_steps)
    assert stopped.status == "stopped" and stopped.steps == 3
    resumed = train(config, run_dir=tmp_path / "b", dataset=text_dataset)
    assert resumed.resumed_from_step == 3
    assert_identical_runs(uninterrupted, resumed, tmp_path / "a", tmp_path / "b")

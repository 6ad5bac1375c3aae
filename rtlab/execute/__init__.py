"""execute: the training loop (pure PyTorch; knows nothing of MLflow or Optuna)."""

from rtlab.execute.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from rtlab.execute.trainer import (
    EVAL_SEED,
    TrainingDiverged,
    TrainResult,
    build_model,
    gpt_config,
    learning_rate_at,
    train,
)

__all__ = [
    "CHECKPOINT_NAME",
    "EVAL_SEED",
    "TrainResult",
    "TrainingDiverged",
    "build_model",
    "learning_rate_at",
    "load_checkpoint",
    "gpt_config",
    "save_checkpoint",
    "train",
]

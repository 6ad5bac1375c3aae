"""rtlab's GPT core: the model (gpt.py, with its attention backends in attention.py, slot masks
in masks.py, myopic attention in myopic.py and its linear layers in linear.py), device helpers,
and the METHODS §4 audit."""

from rtlab.config import GPTConfig, ReasoningConfig
from rtlab.model.gpt import GPT

__all__ = ["GPT", "GPTConfig", "ReasoningConfig"]

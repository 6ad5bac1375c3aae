"""rtlab's GPT core: one model file (gpt.py), device helpers, and the METHODS §4 audit."""

from rtlab.config import GPTConfig, ReasoningConfig
from rtlab.model.gpt import GPT

__all__ = ["GPT", "GPTConfig", "ReasoningConfig"]

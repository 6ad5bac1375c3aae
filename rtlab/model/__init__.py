"""rtlab's GPT core: one model file (gpt.py), device helpers, and the METHODS §4 audit."""

from rtlab.model.gpt import GPT, GPTConfig, ReasoningConfig

__all__ = ["GPT", "GPTConfig", "ReasoningConfig"]

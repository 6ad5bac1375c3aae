"""rtlab: a reproducible lab for reasoning tokens and myopic training in GPTs."""

__version__ = "0.1.0"

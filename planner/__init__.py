"""planner: a reproducible build planner for GPU machine-learning container images."""

__version__ = "0.1.0"

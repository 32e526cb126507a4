"""Inference tasks API: a small backend service of the AI platform."""

__version__ = "1.0.0"

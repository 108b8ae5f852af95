"""dualseg backend: API process and shared non-ML code (no torch here)."""

__version__ = "0.1.0"

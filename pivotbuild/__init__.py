"""pivotbuild: a Make-like, content-hashed build tool for data and ML pipelines."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

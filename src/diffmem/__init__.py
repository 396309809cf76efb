"""diffmem: measure, explain and predict memorization in diffusion models."""

__version__ = "0.1.0"

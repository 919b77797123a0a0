"""Batch orchestrator for Stable Diffusion text-to-image dataset generation."""

from contract import __version__

__all__ = ["__version__"]

"""Batch orchestrator for Stable Diffusion text-to-image dataset generation."""

__version__ = "0.1.0"

"""The data plane: load a pipeline once, take JSON jobs, return JSON results and image bytes."""

"""Mixed-bit palettization (Apple's ml-stable-diffusion recipe), done offline-capable:
per-layer sensitivity analysis, recipes for a target size or quality, and compressed variants
for the diffusers backend (torch) and the Core ML backend (``.mlpackage``)."""

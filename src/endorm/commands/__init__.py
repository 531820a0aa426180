"""Sub-commands of the core: score, download, models."""

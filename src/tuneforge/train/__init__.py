"""The training loop and what surrounds it: setup, checkpoints, metrics, progress, signals."""

"""Measure a model: validation loss, and answers to held-out prompts before and after training."""

"""Live environment: real fine-tuning, sampling and scoring with `tools`, cached on disk."""

"""The one training loop and what it needs: optimiser, schedule, precision, checkpoints."""

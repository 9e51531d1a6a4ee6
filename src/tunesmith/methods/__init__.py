"""One module per fine-tuning method; each builds the model, the batches and the loss for train/loop.py."""

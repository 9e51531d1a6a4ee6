"""tunesmith: fine-tune language models on your own data, end to end, and prove that it helped."""

__version__ = "0.1.0"

"""Causal-LM pieces every such method shares: chat-template spans (chat), token batches and packing (tokens),
per-token and per-sequence log-probabilities (logprobs)."""

"""Scoring a tuned model against its untuned baseline on the same test set."""

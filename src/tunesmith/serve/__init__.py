"""`tunesmith serve`: runs behind an OpenAI-compatible HTTP API, with request logs, feedback and metrics."""

"""Observability without a web framework: the prediction log, its queries, the live-stream fan-out and drift."""

"""Serving: the Bento service and its HTTP-only pieces (middleware, error mapping, metrics, BentoML patches)."""

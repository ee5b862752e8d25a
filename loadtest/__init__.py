"""Locust load tests of the nids-bento service: scenarios, load shapes, a runner and its summary (docs/loadtest.md)."""

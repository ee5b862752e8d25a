"""Stream ingestion: score flow records from Kafka, at least once, with a dead-letter topic (docs/stream.md).

`python -m nids.stream` runs the worker (nids.stream.worker); `python -m nids.stream produce FILE` publishes
records of a CSV or JSON file (nids.stream.produce). Settings: the NIDS_KAFKA_* and NIDS_STREAM_* section of
nids.core.settings.Settings.
"""

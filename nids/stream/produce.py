"""The test producer: publish flow records of a CSV or JSON file to the input topic, one record a message.

CSV (or .csv.gz): NSL-KDD (KDDTrain+/KDDTest+), CICFlowMeter output of either CIC-IDS2017 release, or any file
with those columns. Each row becomes the record a flow exporter would send: the model's features (corrected-
release columns under the original spaced names) and the context columns (flow id, addresses, source port,
timestamp); labels and other columns are left out. Numbers are sent as JSON numbers; text that is not a finite
number (`Infinity`, `NaN`, a service name) is sent as text, and empty cells are left out, as the REST CSV
upload does: rows that the API would refuse land on the dead-letter topic.

JSON: a list of flows, an object holding one (a request fixture such as `{"flows": [...]}`), or one flow.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from nids.core.features import ATTACK_FEATURE_BY_SNAKE, ATTACK_FEATURES, ATTACK_IMPROVED_COLUMNS, THREAT_FEATURES
from nids.core.pipeline import CSV_CONTEXT_COLUMNS
from nids.core.settings import Settings
from nids.stream.batches import MAX_BATCH_BYTES, BatchSender, Outbound
from nids.stream.settings import client_options

PUBLISH_BATCH = 1000  # records a producer batch carries to one partition

# CSV column -> field of the record
_FEATURE_COLUMNS: dict[str, str] = {
    **{name: name for name in THREAT_FEATURES},
    **{improved: original for original, improved in ATTACK_IMPROVED_COLUMNS.items()},
    **{snake: snake for snake in ATTACK_FEATURE_BY_SNAKE},
    **{name: name for name in ATTACK_FEATURES},
}


def read_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The flow records of a .csv, .csv.gz or .json file (at most `limit`)."""
    name = path.name.lower()
    if name.endswith(".json"):
        return list(islice(_json_records(json.loads(path.read_text(encoding="utf-8"))), limit))
    if name.endswith((".csv", ".csv.gz")):
        return list(_csv_records(path, limit))
    raise ValueError(f"{path}: expected a .csv, .csv.gz or .json file")


def _json_records(data: object) -> Iterator[dict[str, Any]]:
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) == 1:  # a request body: {"flows": [...]}
            data = lists[0]
        else:
            yield data
            return
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError("a JSON file must hold a flow, a list of flows or an object with one list of flows")
    yield from data


def _csv_records(path: Path, limit: int | None) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    # cp1252 bytes of the original CIC-IDS2017 files sit in the label column only, which is never sent
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        fields: dict[int, str] = {}
        for j, column in enumerate(next(reader, [])):
            if column in _FEATURE_COLUMNS:
                fields[j] = _FEATURE_COLUMNS[column]
            elif column.strip().lower() in CSV_CONTEXT_COLUMNS:
                fields[j] = CSV_CONTEXT_COLUMNS[column.strip().lower()]
        if not set(fields.values()) - set(CSV_CONTEXT_COLUMNS.values()):
            raise ValueError(f"{path}: no column of the threat or the attack features")
        for line in islice(reader, limit):
            yield {fields[j]: _value(text) for j, text in enumerate(line) if j in fields and text != ""}


def _value(text: str) -> Any:
    """A cell as the JSON value an exporter would send: an integer, a finite float, or the text itself."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text.strip()


def encode(records: Iterable[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(record) for record in records]


async def publish(settings: Settings, values: Sequence[bytes], topic: str | None = None) -> list[tuple[int, int]]:
    """Send the values (keyless) to the topic (default: the input topic), in batches of `PUBLISH_BATCH` (each on
    the next partition); the (partition, offset) the broker acknowledged for each value, in order."""
    producer = AIOKafkaProducer(acks="all", linger_ms=5, max_batch_size=MAX_BATCH_BYTES, **client_options(settings))
    await producer.start()
    try:
        sender = BatchSender(producer)
        name = topic or settings.kafka_topic
        pending = []
        for start in range(0, len(values), PUBLISH_BATCH):
            pending.extend(await sender.send([Outbound(name, None, v) for v in values[start : start + PUBLISH_BATCH]]))
        placed: list[tuple[int, int]] = []
        for messages, future in pending:  # a batch's acknowledgement carries the offset of its first message
            metadata: RecordMetadata = await future  # type: ignore[assignment]
            placed.extend((metadata.partition, metadata.offset + i) for i in range(len(messages)))
        return placed
    finally:
        await producer.stop()

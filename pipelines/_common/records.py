"""Reading a Stream's Kafka records back: what the collector wrote, one JSON object per record.

The collector produces each valid event as the compact JSON of the event itself (no
envelope; the record key is the schema's key field; timestamp fields normalised to epoch
milliseconds). Other producers may write RFC 3339 strings instead. The lake sink's
per-record path and the A/B analysis both read records with `decode_event` and
`event_time_ms`, so a record means the same thing to every consumer.
"""

from __future__ import annotations

from typing import Any

import orjson
from gyre.pipelines.collector.validate import parse_timestamp_ms


class UndecodableRecord(ValueError):
    """A record value that is not one JSON object (the message says why)."""


def decode_event(value: bytes | None) -> dict[str, Any]:
    """The event a record holds; `UndecodableRecord` when it is not a JSON object."""
    if value is None:
        raise UndecodableRecord("a record without a value (a tombstone)")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise UndecodableRecord(f"a record that is not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise UndecodableRecord("a record that is not a JSON object")
    return obj


def event_time_ms(value: Any) -> int | None:
    """A timestamp field's value as epoch milliseconds: an integer as is (what the collector
    writes), an RFC 3339 string parsed; None for anything else."""
    if isinstance(value, str):
        return parse_timestamp_ms(value)
    if type(value) is int:
        return value
    return None

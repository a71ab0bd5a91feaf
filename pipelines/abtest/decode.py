"""From Kafka record values to the join's `Assignment` and `Outcome` (pure, no Kafka).

Assignments are the router's log: ``{"request_id", "key", "variant", "route", "code",
"prediction", "time"}`` (time in unix seconds). Outcomes are a Stream's events as the
collector wrote them (`gyre.pipelines._common.records`). A record that cannot be read raises
`Malformed`; a feedback event without the metric field is not an outcome (None): a Stream
carries other events too.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from gyre.pipelines._common.records import UndecodableRecord, decode_event, event_time_ms
from gyre.pipelines.abtest.config import AbTestConfig
from gyre.pipelines.abtest.join import Assignment, Outcome


class Malformed(ValueError):
    """A record the analysis cannot use (the message says why); counted, never fatal."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _id(value: Any) -> str | None:
    """An identifier: a non-empty string, or an integer taken as its decimal string."""
    if isinstance(value, str) and value:
        return value
    if type(value) is int:
        return str(value)
    return None


def decode_assignment(value: bytes | None, variants: Collection[str]) -> Assignment:
    try:
        obj = decode_event(value)
    except UndecodableRecord as e:
        raise Malformed(str(e)) from e
    request_id = _id(obj.get("request_id"))
    variant = obj.get("variant")
    code = obj.get("code")
    t = _number(obj.get("time"))
    key = obj.get("key")
    if request_id is None:
        raise Malformed("an assignment without a request_id")
    if not isinstance(variant, str) or variant not in variants:
        raise Malformed(f"assignment {request_id}: variant {variant!r} is not one of the experiment's")
    if type(code) is not int or t is None or isinstance(obj.get("time"), bool):
        raise Malformed(f"assignment {request_id}: code must be an integer and time a number")
    if key is not None and _id(key) is None:
        raise Malformed(f"assignment {request_id}: key must be a string or null")
    return Assignment(request_id, _id(key), variant, code, t)


def decode_outcome(value: bytes | None, cfg: AbTestConfig, record_time_ms: int | None) -> Outcome | None:
    """The outcome a feedback record holds; None when the event does not carry the metric.

    Its time is the event's ``timestamp_field`` when configured, else the record's timestamp
    (``record_time_ms``, epoch milliseconds).
    """
    try:
        obj = decode_event(value)
    except UndecodableRecord as e:
        raise Malformed(str(e)) from e
    if cfg.metric not in obj:
        return None
    metric = _number(obj[cfg.metric])
    if metric is None:
        raise Malformed(f"the metric {cfg.metric!r} is not a finite number: {obj[cfg.metric]!r}")
    raw_rid, raw_key = obj.get(cfg.request_id_field), obj.get(cfg.key_field)
    request_id, key = _id(raw_rid), _id(raw_key)
    if (raw_rid is not None and request_id is None) or (raw_key is not None and key is None):
        raise Malformed(f"{cfg.request_id_field!r} and {cfg.key_field!r} must be strings")
    if request_id is None and key is None:
        raise Malformed(f"an outcome with neither {cfg.request_id_field!r} nor {cfg.key_field!r}")
    ms = event_time_ms(obj.get(cfg.timestamp_field)) if cfg.timestamp_field else record_time_ms
    if ms is None:
        raise Malformed(f"an outcome without a readable time ({cfg.timestamp_field or 'record timestamp'})")
    return Outcome(request_id, key, metric, ms / 1000.0)

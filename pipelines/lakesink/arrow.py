"""From Kafka record values (JSON objects) to Arrow tables with the lake's explicit schema.

The collector produces compact JSON (one object per record, no raw newlines, timestamps as
epoch milliseconds), so a batch of values joined by newlines is NDJSON that Arrow's C++
JSON reader parses with an explicit schema in one call, without per-record Python work.
Records that do not fit (written by another producer) fall back to a per-record path that
skips what cannot be read and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from gyre.pipelines._common.records import UndecodableRecord, decode_event, event_time_ms
from gyre.pipelines._common.schema import StreamSchema

log = logging.getLogger("gyre.lakesink")

PARTITION_COLUMN = "_kafka_partition"
OFFSET_COLUMN = "_kafka_offset"
TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")

_PARSE_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "timestamp": pa.int64(),  # epoch millis in the record; cast after parsing
}


_LAKE_TYPES: dict[str, pa.DataType] = {"timestamp": TIMESTAMP_TYPE}


def parse_schema(schema: StreamSchema) -> pa.Schema:
    """The schema record values are parsed with (timestamps still epoch milliseconds)."""
    return pa.schema([pa.field(f.name, _PARSE_TYPES[f.type]) for f in schema.fields])


def lake_schema(schema: StreamSchema) -> pa.Schema:
    """The Parquet schema of the lake's files: the Stream's fields, then Kafka provenance.

    ``_kafka_partition`` / ``_kafka_offset`` say which record each row came from, so a row
    can be traced back and exactly-once can be checked from the data alone.
    """
    fields = [
        pa.field(f.name, _LAKE_TYPES.get(f.type) or _PARSE_TYPES[f.type], nullable=not f.required)
        for f in schema.fields
    ]
    fields += [
        pa.field(PARTITION_COLUMN, pa.int32(), nullable=False),
        pa.field(OFFSET_COLUMN, pa.int64(), nullable=False),
    ]
    return pa.schema(fields)


class RecordDecoder:
    """Decodes a partition's batch of record values into a table with `lake_schema`."""

    def __init__(self, schema: StreamSchema) -> None:
        self.schema = schema
        self.parse_schema = parse_schema(schema)
        self.lake_schema = lake_schema(schema)
        self.ts_fields = [f.name for f in schema.fields if f.type == "timestamp"]
        self._parse_opts = pj.ParseOptions(
            explicit_schema=self.parse_schema, unexpected_field_behavior="ignore"
        )

    def decode(
        self, values: Sequence[bytes], partition: int, offsets: Sequence[int]
    ) -> tuple[pa.Table, list[int] | None]:
        """(table, indices of the values it holds; None when it holds all of them).

        Values that cannot be read (not JSON, wrong types, a required field missing) are
        skipped and logged: the topic's offsets past them are still committed, so a bad
        record is skipped exactly once rather than blocking the partition forever.
        """
        table = self._fast(values)
        keep: list[int] | None = None
        if table is None:
            table, keep = self._slow(values)
        offs = offsets if keep is None else [offsets[i] for i in keep]
        columns: list[Any] = []
        for f in self.lake_schema:
            if f.name == PARTITION_COLUMN:
                columns.append(pa.array([partition] * table.num_rows, pa.int32()))
            elif f.name == OFFSET_COLUMN:
                columns.append(pa.array(offs, pa.int64()))
            elif f.name in self.ts_fields:
                columns.append(pc.cast(table[f.name], TIMESTAMP_TYPE))
            else:
                columns.append(table[f.name])
        out = pa.Table.from_arrays(columns, schema=self.lake_schema.remove_metadata())
        return out, keep

    def _fast(self, values: Sequence[bytes]) -> pa.Table | None:
        if not values:
            return self.parse_schema.empty_table()
        data = b"\n".join(values)
        try:
            table = pj.read_json(
                pa.py_buffer(data),
                read_options=pj.ReadOptions(use_threads=False, block_size=max(len(data), 1 << 20)),
                parse_options=self._parse_opts,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows != len(values):  # a value held a raw newline, or was empty
            return None
        if not self._required_present(table):
            return None
        return table

    def _required_present(self, table: pa.Table) -> bool:
        return all(table[f.name].null_count == 0 for f in self.schema.fields if f.required)

    def _slow(self, values: Sequence[bytes]) -> tuple[pa.Table, list[int]]:
        rows: list[dict[str, Any]] = []
        keep: list[int] = []
        for i, v in enumerate(values):
            row = self._row(v)
            if row is None:
                continue
            try:
                pa.Table.from_pylist([row], schema=self.parse_schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                log.warning("Skipped a record whose fields do not fit the schema")
                continue
            rows.append(row)
            keep.append(i)
        return pa.Table.from_pylist(rows, schema=self.parse_schema), keep

    def _row(self, value: bytes | None) -> dict[str, Any] | None:
        try:
            obj = decode_event(value)
        except UndecodableRecord as e:
            log.warning("Skipped %s", e)
            return None
        row = {f.name: obj.get(f.name) for f in self.schema.fields}
        for name in self.ts_fields:
            ts = row[name]
            if isinstance(ts, str):
                row[name] = event_time_ms(ts)
        if any(row[f.name] is None for f in self.schema.fields if f.required):
            log.warning("Skipped a record without a required field")
            return None
        return row


def split_by_date(table: pa.Table, ts_field: str, fallback_ms: Sequence[int]) -> list[tuple[str, pa.Table]]:
    """[(``YYYY-MM-DD``, rows of that UTC event date)], dates ascending.

    Rows without an event time use ``fallback_ms`` (the Kafka record timestamps).
    """
    if table.num_rows == 0:
        return []
    ts = table[ts_field]
    if ts.null_count:
        ts = pc.coalesce(ts, pa.array(fallback_ms, pa.int64()).cast(TIMESTAMP_TYPE))
    dates = pc.cast(ts, pa.date32())
    lo, hi = pc.min_max(dates).values()
    if lo == hi:
        return [(lo.as_py().isoformat(), table)]
    out = []
    for d in sorted(pc.unique(dates).to_pylist()):
        out.append((d.isoformat(), table.filter(pc.equal(dates, pa.scalar(d, pa.date32())))))
    return out

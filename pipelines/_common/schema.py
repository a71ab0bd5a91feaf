"""The event schema of a Stream: typed fields, required fields, enums, key and timestamp field.

Shared by the collector (which validates events against it) and the lake sink (which derives
its Parquet schema from it). The dict form (`StreamSchema.to_dict` / `from_dict`) is what the
workloads' JSON config carries.

Field types and what a valid JSON value is:

=========== ================================================================================
string      a JSON string
int         a JSON integer in the signed 32-bit range
long        a JSON integer in the signed 64-bit range
float       a JSON number (stored as float32 in the lake)
double      a JSON number
boolean     ``true`` / ``false``
timestamp   an RFC 3339 string with an offset (``2024-05-01T12:00:00Z``) or epoch milliseconds;
            the collector normalises it to epoch milliseconds in the record it produces
=========== ================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gyre.pipelines._common.env import ConfigError

FIELD_TYPES: tuple[str, ...] = ("string", "int", "long", "float", "double", "boolean", "timestamp")

EnumValue = str | int


@dataclass(frozen=True)
class FieldSpec:
    """One field of an event.

    ``name``: the JSON key. ``type``: one of `FIELD_TYPES`. ``required``: the event is rejected
    when the field is missing or null. ``enum``: when set, the only values allowed.
    """

    name: str
    type: str
    required: bool = False
    enum: tuple[EnumValue, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if self.enum is not None:
            d["enum"] = list(self.enum)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldSpec:
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("schema.fields[]: each field needs a non-empty string 'name'")
        ftype = data.get("type")
        if ftype not in FIELD_TYPES:
            raise ConfigError(f"schema field {name!r}: type {ftype!r} is not one of {FIELD_TYPES}")
        required = data.get("required", False)
        if not isinstance(required, bool):
            raise ConfigError(f"schema field {name!r}: 'required' must be a boolean")
        enum_raw = data.get("enum")
        enum: tuple[EnumValue, ...] | None = None
        if enum_raw is not None:
            if not isinstance(enum_raw, list) or not enum_raw:
                raise ConfigError(f"schema field {name!r}: 'enum' must be a non-empty list")
            want: type = str if ftype == "string" else int
            if ftype not in ("string", "int", "long"):
                raise ConfigError(f"schema field {name!r}: enum is allowed on string/int/long only")
            for v in enum_raw:
                if not isinstance(v, want) or isinstance(v, bool):
                    raise ConfigError(f"schema field {name!r}: enum value {v!r} is not a {ftype}")
            enum = tuple(enum_raw)
        return cls(name=name, type=str(ftype), required=required, enum=enum)


@dataclass(frozen=True)
class StreamSchema:
    """The schema of a Stream's events.

    ``fields``: the declared fields, in order (the lake's column order). ``key_field``: the field
    whose value is the Kafka record key (events with the same key land in the same partition);
    it must be declared. ``timestamp_field``: a declared field of type ``timestamp``, the event
    time (the lake partitions by its UTC date). ``extra_fields``: what the collector does with
    keys that are not declared: ``keep`` them in the record (the lake ignores them until the
    schema declares them), ``drop`` them, or ``reject`` the event.
    """

    fields: tuple[FieldSpec, ...]
    key_field: str
    timestamp_field: str
    extra_fields: str = "keep"

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if not names:
            raise ConfigError("schema: at least one field is required")
        if len(set(names)) != len(names):
            raise ConfigError("schema: field names must be unique")
        if self.key_field not in names:
            raise ConfigError(f"schema: key field {self.key_field!r} is not a declared field")
        ts = self.field(self.timestamp_field) if self.timestamp_field in names else None
        if ts is None:
            raise ConfigError(f"schema: timestamp field {self.timestamp_field!r} is not a declared field")
        if ts.type != "timestamp":
            raise ConfigError(f"schema: timestamp field {ts.name!r} must have type 'timestamp'")
        if self.extra_fields not in ("keep", "drop", "reject"):
            raise ConfigError("schema: extra_fields must be one of keep, drop, reject")

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fields": [f.to_dict() for f in self.fields],
            "key_field": self.key_field,
            "timestamp_field": self.timestamp_field,
            "extra_fields": self.extra_fields,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamSchema:
        raw_fields = data.get("fields")
        if not isinstance(raw_fields, list):
            raise ConfigError("schema.fields must be a list")
        key_field = data.get("key_field")
        ts_field = data.get("timestamp_field")
        if not isinstance(key_field, str) or not isinstance(ts_field, str):
            raise ConfigError("schema: key_field and timestamp_field must be strings")
        extra = data.get("extra_fields", "keep")
        if not isinstance(extra, str):
            raise ConfigError("schema.extra_fields must be a string")
        return cls(
            fields=tuple(FieldSpec.from_dict(f) for f in raw_fields),
            key_field=key_field,
            timestamp_field=ts_field,
            extra_fields=extra,
        )


def schema_from_json(value: Any) -> StreamSchema:
    """A config file's ``schema`` object (a `ConfigError` if it is not one)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"schema must be an object, got {type(value).__name__}")
    return StreamSchema.from_dict(value)

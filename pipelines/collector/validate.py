"""Validating events against a `StreamSchema`, compiled to one Python function per schema.

The collector checks every event it receives, so the check is generated once per schema as
straight-line code (one ``if`` chain per field, constants inlined) instead of a loop that
dispatches on field specs per event: this keeps per-event Python overhead to a few hundred
nanoseconds per field. Field names reach the generated source only as ``repr`` literals.

A validator takes a decoded JSON value and returns ``None`` when it is a valid event, or
``(code, message)``: ``code`` is a short reason for metrics (`REASON_CODES`), ``message`` says
which field and why. A valid event is normalised in place: timestamps become epoch
milliseconds and, with ``extra_fields="drop"``, undeclared keys are removed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gyre.pipelines._common.schema import FieldSpec, StreamSchema

Verdict = tuple[str, str] | None
Validator = Callable[[Any], Verdict]

REASON_CODES = (
    "not_object",
    "missing_field",
    "type_mismatch",
    "out_of_range",
    "enum_mismatch",
    "bad_timestamp",
    "unknown_field",
)

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
# Years 1..9999, the range Python's datetime (and so the lake's readers) can represent.
_TS_MS = (-62_135_596_800_000, 253_402_300_799_999)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

_JSON_TYPE = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


def parse_timestamp_ms(text: str) -> int | None:
    """Epoch milliseconds of an RFC 3339 timestamp with an offset; None when it is not one."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None  # RFC 3339 requires an offset; guessing UTC would silently shift events
    return (dt - _EPOCH) // _ONE_MS


def _mismatch(name: str, expected: str, value: Any) -> tuple[str, str]:
    got = _JSON_TYPE.get(type(value), type(value).__name__)
    return ("type_mismatch", f"field {name!r} must be {expected}, got {got}")


def _int_problem(name: str, ftype: str, value: Any) -> tuple[str, str]:
    """Why ``value`` is not a valid ``int``/``long``: its type or its range (the cold path)."""
    if type(value) is not int:
        return _mismatch(name, "an integer", value)
    return ("out_of_range", f"field {name!r} is outside the {ftype} range")


def _check_code(f: FieldSpec, idx: int, consts: dict[str, Any]) -> list[str]:
    """Statements returning a verdict when ``v`` (present, not null) is not a valid value."""
    n = repr(f.name)
    t = f.type
    body: list[str] = []
    if t == "string":
        body += ["if type(v) is not str:", f"    return _mismatch({n}, 'a string', v)"]
    elif t in ("int", "long"):
        lo, hi = _INT32 if t == "int" else _INT64
        # One test on the hot path; `_int_problem` works out which of the two failed.
        body += [
            f"if type(v) is not int or not {lo} <= v <= {hi}:",
            f"    return _int_problem({n}, {t!r}, v)",
        ]
    elif t in ("float", "double"):
        body += [
            "if type(v) is not float and type(v) is not int:",
            f"    return _mismatch({n}, 'a number', v)",
        ]
    elif t == "boolean":
        body += ["if type(v) is not bool:", f"    return _mismatch({n}, 'a boolean', v)"]
    elif t == "timestamp":
        lo, hi = _TS_MS
        bad = f"field {f.name!r} is not an RFC 3339 timestamp with an offset"
        body += [
            "if type(v) is int:",
            f"    if not {lo} <= v <= {hi}:",
            f"        return ('out_of_range', {f'field {f.name!r} is outside years 1..9999'!r})",
            "elif type(v) is str:",
            "    ms = _parse_ts(v)",
            "    if ms is None:",
            f"        return ('bad_timestamp', {bad!r})",
            f"    e[{n}] = ms",
            "else:",
            f"    return _mismatch({n}, 'an RFC 3339 string or epoch milliseconds', v)",
        ]
    else:  # pragma: no cover - StreamSchema rejects unknown types
        raise ValueError(f"unknown field type {t!r}")
    if f.enum is not None:
        cname = f"_ENUM_{idx}"
        consts[cname] = frozenset(f.enum)
        allowed = ", ".join(repr(x) for x in f.enum)
        body += [
            f"if v not in {cname}:",
            f"    return ('enum_mismatch', {f'field {f.name!r} must be one of {allowed}'!r})",
        ]
    return body


def _field_code(f: FieldSpec, idx: int, consts: dict[str, Any]) -> list[str]:
    # A missing key and an explicit null mean the same, so one `get` answers both.
    lines = [f"    v = e.get({f.name!r})"]
    body = _check_code(f, idx, consts)
    if f.required:
        msg = f"required field {f.name!r} is missing"
        lines += ["    if v is None:", f"        return ('missing_field', {msg!r})"]
        lines += ["    " + b for b in body]
    else:
        lines.append("    if v is not None:")
        lines += ["        " + b for b in body]
    return lines


def compile_validator(schema: StreamSchema) -> Validator:
    """The validator function for ``schema`` (see the module docstring)."""
    consts: dict[str, Any] = {
        "_mismatch": _mismatch,
        "_int_problem": _int_problem,
        "_parse_ts": parse_timestamp_ms,
        "_KNOWN": frozenset(f.name for f in schema.fields),
    }
    src = [
        "def validate(e):",
        "    if type(e) is not dict:",
        "        return ('not_object', 'event is not a JSON object')",
    ]
    for i, f in enumerate(schema.fields):
        src += _field_code(f, i, consts)
    if schema.extra_fields == "reject":
        src += [
            "    if not _KNOWN.issuperset(e):",
            "        extra = sorted(k for k in e if k not in _KNOWN)",
            "        return ('unknown_field', 'undeclared fields: ' + ', '.join(extra))",
        ]
    elif schema.extra_fields == "drop":
        src += [
            "    if not _KNOWN.issuperset(e):",
            "        for k in [k for k in e if k not in _KNOWN]:",
            "            del e[k]",
        ]
    src.append("    return None")
    namespace: dict[str, Any] = dict(consts)
    # Only repr() literals of field names and constants reach the source (see the docstring).
    exec(compile("\n".join(src), f"<validator {schema.key_field}>", "exec"), namespace)
    fn: Validator = namespace["validate"]
    return fn

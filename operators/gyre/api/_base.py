"""Building blocks shared by the five kinds: the base model, conditions, references, resources.

Models here are the single source of truth for the CRDs (`gyre.api.crd` renders them). Field
names are snake_case in Python and camelCase on the wire.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "gyre.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Patterns the API server enforces, with the message a user sees when one fails.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DURATION = r"^[0-9]+(ms|s|m|h|d|w)$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
URI = r"^(file|s3|gs|hdfs)://.+$"
CAMEL_REASON = r"^[A-Z][A-Za-z0-9]*$"

DnsName = Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]
Duration = Annotated[
    str,
    Field(
        pattern=DURATION,
        max_length=32,
        description='A duration such as "500ms", "30s", "15m", "24h", "7d", "2w".',
    ),
]
Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=32)]
Uri = Annotated[
    str,
    Field(pattern=URI, max_length=2048, description="A URI: file:///path or s3://bucket/prefix."),
]
FieldName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", min_length=1, max_length=128)]


class ApiModel(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def exactly_one(*fields: str) -> dict[str, str]:
    """A CEL rule: exactly one of the (camelCase) fields is set."""
    terms = " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields)
    names = ", ".join(f"`{f}`" for f in fields)
    return cel(f"{terms} == 1", f"set exactly one of {names}")


class Resources(ApiModel):
    """Compute resources of one process or pod."""

    cpu: Quantity | None = None
    """CPU request and limit, e.g. "500m" or "2"."""
    memory: Quantity | None = None
    """Memory request and limit, e.g. "512Mi" or "4Gi"."""
    gpu: Annotated[int, Field(ge=0, le=16)] = 0
    """NVIDIA GPUs (nvidia.com/gpu)."""


class SecretKeyRef(ApiModel):
    name: DnsName
    """Name of a Secret in the resource's namespace."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key inside the Secret."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition shaped like metav1.Condition."""

    model_config = ConfigDict(frozen=False)

    type: Annotated[str, Field(pattern=CAMEL_REASON, max_length=316)]
    status: ConditionStatus
    reason: Annotated[str, Field(pattern=CAMEL_REASON, max_length=1024)]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    observed_generation: Annotated[int, Field(ge=0)] | None = None


class BaseStatus(ApiModel):
    """What every kind reports: the generation it has seen, and its conditions."""

    model_config = ConfigDict(frozen=False, extra="allow")

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this status describes."""
    phase: Annotated[str, Field(max_length=64)] | None = None
    """A one-word summary for humans; conditions are the API."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = []
    """Ready, Progressing, Degraded and kind-specific conditions."""


class KindInfo(ApiModel):
    """How a kind is named and shown; rendered into the CRD."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    categories: list[str] = ["gyre"]
    printer_columns: list[dict[str, Any]]


def ready_column() -> list[dict[str, Any]]:
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        },
    ]


def age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


class Kind(ApiModel):
    """Marker base for the top-level spec models; subclasses set ``INFO`` and ``STATUS``."""

    INFO: ClassVar[KindInfo]
    STATUS: ClassVar[type[BaseStatus]]

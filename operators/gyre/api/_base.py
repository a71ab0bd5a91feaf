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

# A format note the CRD renderer appends to the field's own description (a description on
# the type itself would hide the field's docstring).
FORMAT_HINT = "x-gyre-format"


def _format(text: str) -> dict[str, Any]:
    return {FORMAT_HINT: text}


DnsName = Annotated[str, Field(pattern=DNS_LABEL, min_length=1, max_length=63)]
Duration = Annotated[
    str,
    Field(
        pattern=DURATION,
        max_length=32,
        json_schema_extra=_format('A duration: a number and a unit (ms, s, m, h, d, w), e.g. "30s", "7d".'),
    ),
]
Quantity = Annotated[
    str,
    Field(
        pattern=QUANTITY,
        max_length=32,
        json_schema_extra=_format('A Kubernetes quantity, e.g. "500m", "2", "512Mi", "4Gi".'),
    ),
]
Uri = Annotated[
    str,
    Field(
        pattern=URI,
        max_length=2048,
        json_schema_extra=_format("A URI: file:///path, s3://bucket/prefix, gs://... or hdfs://..."),
    ),
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
    """CPU request, in cores (no CPU limit is set: throttling hurts more than it protects);
    unset leaves it to the cluster's defaults. The local runtime does not enforce it."""
    memory: Quantity | None = None
    """Memory request and limit, in bytes with a suffix; unset leaves it to the cluster's
    defaults. The local runtime does not enforce it."""
    gpu: Annotated[int, Field(ge=0, le=16)] = 0
    """NVIDIA GPUs (nvidia.com/gpu limit) per process or pod; 0 (the default) runs on CPU."""


class SecretKeyRef(ApiModel):
    """One key of a Secret in the resource's namespace."""

    name: DnsName
    """Name of a Secret in the resource's namespace."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key inside the Secret whose value is used."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition shaped like metav1.Condition."""

    model_config = ConfigDict(frozen=False)

    type: Annotated[str, Field(pattern=CAMEL_REASON, max_length=316)]
    """What the condition is about: Ready, Progressing, Degraded, DependenciesReady, or a
    kind-specific one (a TrainingJob's Running, Succeeded, Failed...)."""
    status: ConditionStatus
    """Whether the condition holds: True, False or Unknown."""
    reason: Annotated[str, Field(pattern=CAMEL_REASON, max_length=1024)]
    """Why, as one CamelCase word a program can match on (e.g. DependencyMissing, InvalidSpec)."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Why, in a sentence for humans: names the dependency, the field or the error."""
    last_transition_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    """When status last changed (not when the reason or message did)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation the condition was computed for."""


class BaseStatus(ApiModel):
    """What every kind reports: the generation it has seen, and its conditions."""

    model_config = ConfigDict(frozen=False, extra="allow")

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this status describes; older than metadata.generation while a
    spec change is not reconciled yet."""
    phase: Annotated[str, Field(max_length=64)] | None = None
    """A one-word summary for humans (e.g. Waiting, Running, Ready, Invalid, Error); programs
    should read the conditions."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = []
    """Ready, Progressing, Degraded, DependenciesReady and kind-specific conditions."""


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

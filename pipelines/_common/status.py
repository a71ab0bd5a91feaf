"""The workload status contract: every Gyre workload serves ``GET /status`` beside ``/metrics``.

The body is one typed document per workload (a subclass of `StatusDoc`, defined next to the
workload and imported by its controller), so the workload writes and the controller reads
the very same schema: no JSON key is spelled twice. Controllers fetch it through the runtime
(`gyre.runtimes.base.Runtime.read_status`), on both runtimes alike, and never read a
workload's files or parse its metrics for state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

STATUS_PATH = "/status"

D = TypeVar("D", bound="StatusDoc")


class StatusDoc(BaseModel):
    """Base of every workload's status document (JSON, snake_case keys)."""

    # A newer workload may add fields an older operator does not know: ignored, not an error.
    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_body(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def parse(cls: type[D], body: Mapping[str, Any] | None) -> D | None:
        """The document, or None when there is none or it does not match the schema."""
        if body is None:
            return None
        try:
            return cls.model_validate(dict(body))
        except ValidationError:
            return None

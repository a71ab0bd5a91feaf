"""Status for kinds whose workloads this release does not run yet.

Their references are resolved and their cross-resource rules checked like any other kind's;
`Ready` then stays False with reason `NotSupportedYet` and a message saying what is missing,
instead of pretending to run something.
"""

from __future__ import annotations

from typing import Any

from gyre.controllers.base import Controller, StatusInput, StatusOutput
from gyre.core import conditions as cnd


class PendingDataPlane(Controller[Any]):
    """Shared `compute_status` of a kind whose data plane arrives in a later release."""

    data_plane: str = ""

    def compute_status(self, spec: Any, inp: StatusInput) -> StatusOutput:
        message = (
            f"dependencies are resolved; running {self.kind} workloads ({self.data_plane}) "
            "is not supported by this Gyre release yet"
        )
        return StatusOutput(
            status=self.spec_model.STATUS(),
            conditions=[
                cnd.Cond(cnd.READY, False, cnd.NOT_SUPPORTED, message),
                cnd.Cond(cnd.PROGRESSING, False, cnd.NOT_SUPPORTED, message),
            ],
            phase="Accepted",
        )

"""Stream reconcile: Kafka, topic, collector and sinks."""

from __future__ import annotations

from gyre.api.stream import StreamSpec
from gyre.controllers.pending import PendingDataPlane


class StreamController(PendingDataPlane):
    kind = "Stream"
    spec_model = StreamSpec
    data_plane = "Kafka, collector, sinks"

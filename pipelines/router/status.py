"""What the router serves on ``/status`` (the controller of a route's owner reads it).

Counts are since the process started and kept across configuration reloads, by backend name;
weights are those of the configuration in effect.
"""

from __future__ import annotations

from gyre.pipelines._common.status import StatusDoc


class BackendStatus(StatusDoc):
    name: str
    url: str
    weight: float
    requests: int = 0  # requests sent to it, answered or not
    errors: int = 0  # requests it did not answer (the client got a 502)


class ShadowStatus(StatusDoc):
    name: str
    url: str
    percent: float
    requests: int = 0  # mirrored requests sent to it
    errors: int = 0  # mirrored requests it did not answer
    dropped: int = 0  # mirrors not sent: too many were in flight
    compared: int = 0  # its answers compared with the answer the client got (both predictions)
    different: int = 0  # of those, predictions that differ (by more than 1e-6)
    incomparable: int = 0  # answered, but not comparable (not predictions, or a fallback)
    mean_difference: float | None = None  # mean of the largest absolute difference per answer
    max_difference: float | None = None  # the largest absolute difference seen


class RouterStatus(StatusDoc):
    route: str
    policy: str
    sticky_header: str | None = None
    backends: list[BackendStatus] = []
    shadow: ShadowStatus | None = None
    reloads: int = 0  # configuration changes taken since start
    config_error: str | None = None  # why the file's latest content was not taken, if it was not
    assignments_logged: int = 0  # assignment records Kafka acknowledged
    assignments_dropped: int = 0  # assignment records dropped: the producer's queue was full
    assignments_failed: int = 0  # assignment records Kafka did not take

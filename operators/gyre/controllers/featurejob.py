"""FeatureJob reconcile: resolves its source Stream and checks windows against its retention."""

from __future__ import annotations

from collections.abc import Mapping

from gyre.api.featurejob import FeatureJobSpec
from gyre.api.stream import StreamSpec
from gyre.controllers.base import ObjectMeta, Ref, Resolved
from gyre.controllers.pending import PendingDataPlane
from gyre.core.durations import parse_duration


class FeatureJobController(PendingDataPlane):
    kind = "FeatureJob"
    spec_model = FeatureJobSpec
    data_plane = "Spark"

    def references(self, spec: FeatureJobSpec) -> list[Ref]:
        if spec.source.stream:
            return [Ref("Stream", spec.source.stream, "spec.source.stream")]
        return []

    def check(self, meta: ObjectMeta, spec: FeatureJobSpec, deps: Mapping[str, Resolved]) -> list[str]:
        stream = deps.get("spec.source.stream")
        source = stream.spec_as(StreamSpec) if stream is not None else None
        if stream is None or source is None:
            return []
        problems: list[str] = []
        retention_text = source.topic.retention
        retention = parse_duration(retention_text)
        for f in spec.features:
            if f.window and parse_duration(f.window) > retention:
                problems.append(
                    f"feature {f.name!r} has window {f.window}, longer than the retention "
                    f"{retention_text} of Stream {stream.ref.name!r}: shorten the window or "
                    "raise the Stream's spec.topic.retention"
                )
        fields = {f.name for f in source.schema_.fields}
        for what, col in (("entity", spec.entity), ("timestampField", spec.timestamp_field)):
            if col not in fields:
                problems.append(
                    f"spec.{what} {col!r} is not a field of Stream {stream.ref.name!r}'s schema "
                    f"(fields: {', '.join(sorted(str(x) for x in fields))})"
                )
        return problems

"""TrainingJob reconcile: resolves its dataset (a FeatureJob, a Stream or a path)."""

from __future__ import annotations

from gyre.api.trainingjob import TrainingJobSpec
from gyre.controllers.base import Ref
from gyre.controllers.pending import PendingDataPlane


def dataset_refs(spec: TrainingJobSpec, path: str = "spec") -> list[Ref]:
    ds = spec.dataset
    if ds.feature_job:
        return [Ref("FeatureJob", ds.feature_job, f"{path}.dataset.featureJob")]
    if ds.stream:
        return [Ref("Stream", ds.stream, f"{path}.dataset.stream")]
    return []


class TrainingJobController(PendingDataPlane):
    kind = "TrainingJob"
    spec_model = TrainingJobSpec
    data_plane = "Horovod workers"

    def references(self, spec: TrainingJobSpec) -> list[Ref]:
        return dataset_refs(spec)

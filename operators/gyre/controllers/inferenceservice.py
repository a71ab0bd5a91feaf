"""InferenceService reconcile: resolves its model, features, logging Stream and traffic targets."""

from __future__ import annotations

from gyre.api.inferenceservice import InferenceServiceSpec, ModelSource
from gyre.controllers.base import Ref
from gyre.controllers.pending import PendingDataPlane


def _model_refs(model: ModelSource, path: str) -> list[Ref]:
    return [Ref("TrainingJob", model.training_job, f"{path}.trainingJob")] if model.training_job else []


class InferenceServiceController(PendingDataPlane):
    kind = "InferenceService"
    spec_model = InferenceServiceSpec
    data_plane = "KServe model server"

    def references(self, spec: InferenceServiceSpec) -> list[Ref]:
        refs = _model_refs(spec.model, "spec.model")
        if spec.features:
            refs.append(Ref("FeatureJob", spec.features.feature_job, "spec.features.featureJob"))
        if spec.logging:
            refs.append(Ref("Stream", spec.logging.stream, "spec.logging.stream"))
        if spec.traffic and spec.traffic.canary:
            refs += _model_refs(spec.traffic.canary.model, "spec.traffic.canary.model")
        if spec.traffic and spec.traffic.shadow:
            refs += _model_refs(spec.traffic.shadow.model, "spec.traffic.shadow.model")
        return refs

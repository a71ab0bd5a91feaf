"""Experiment reconcile: resolves what its trials or variants refer to."""

from __future__ import annotations

from gyre.api.experiment import ExperimentSpec
from gyre.controllers.base import Ref
from gyre.controllers.pending import PendingDataPlane
from gyre.controllers.trainingjob import dataset_refs


class ExperimentController(PendingDataPlane):
    kind = "Experiment"
    spec_model = ExperimentSpec
    data_plane = "trial scheduling with Optuna, online allocation and analysis"

    def references(self, spec: ExperimentSpec) -> list[Ref]:
        refs: list[Ref] = []
        if spec.search:
            refs += dataset_refs(spec.search.trial_template, "spec.search.trialTemplate")
        if spec.online:
            for i, v in enumerate(spec.online.variants):
                refs.append(
                    Ref(
                        "InferenceService", v.inference_service, f"spec.online.variants[{i}].inferenceService"
                    )
                )
            if spec.online.feedback_stream:
                refs.append(Ref("Stream", spec.online.feedback_stream, "spec.online.feedbackStream"))
        return refs

"""The Gyre API, `gyre.dev/v1alpha1`: typed models for the five kinds, the source of the CRDs.

Imports nothing but pydantic: no kopf, no Kubernetes client, no runtime (an import contract
checks this).
"""

from gyre.api._base import API_VERSION, GROUP, VERSION, BaseStatus, Condition, Kind
from gyre.api.experiment import ExperimentSpec, ExperimentStatus
from gyre.api.featurejob import FeatureJobSpec, FeatureJobStatus
from gyre.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus
from gyre.api.stream import StreamSpec, StreamStatus
from gyre.api.trainingjob import TrainingJobSpec, TrainingJobStatus

KINDS: dict[str, type[Kind]] = {
    "Stream": StreamSpec,
    "FeatureJob": FeatureJobSpec,
    "TrainingJob": TrainingJobSpec,
    "Experiment": ExperimentSpec,
    "InferenceService": InferenceServiceSpec,
}

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "BaseStatus",
    "Condition",
    "ExperimentSpec",
    "ExperimentStatus",
    "FeatureJobSpec",
    "FeatureJobStatus",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "Kind",
    "StreamSpec",
    "StreamStatus",
    "TrainingJobSpec",
    "TrainingJobStatus",
]

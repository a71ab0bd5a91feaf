"""The controller of each kind."""

from __future__ import annotations

from typing import Any

from gyre.controllers.base import Controller
from gyre.controllers.experiment import ExperimentController
from gyre.controllers.featurejob import FeatureJobController
from gyre.controllers.inferenceservice import InferenceServiceController
from gyre.controllers.stream import StreamController
from gyre.controllers.trainingjob import TrainingJobController

CONTROLLERS: dict[str, Controller[Any]] = {
    c.kind: c
    for c in (
        StreamController(),
        FeatureJobController(),
        TrainingJobController(),
        ExperimentController(),
        InferenceServiceController(),
    )
}

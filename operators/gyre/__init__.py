"""Gyre: a Kubernetes-native ML platform.

Five custom resources in ``gyre.dev/v1alpha1`` (Stream, FeatureJob, Experiment, TrainingJob,
InferenceService) reconciled by one kopf operator into workloads that run on Kubernetes or as
local processes.
"""

__version__ = "0.1.0"

"""Workload shapes: one module per way a workload runs (see `base`); importing this package
registers the built-in ones."""

from gyre.runtimes.shapes import batch, service, stateful
from gyre.runtimes.shapes.base import Manifest, ResourceKind, Shape, register, shape_of, shapes

__all__ = [
    "Manifest",
    "ResourceKind",
    "Shape",
    "batch",
    "register",
    "service",
    "shape_of",
    "shapes",
    "stateful",
]

"""A user model module for the trainer's equivalence tests (``trainer_scaled_loss:build_model``).

The model is the built-in MLP, built exactly as ``kind: mlp`` builds it. Its loss is the
default BCE-with-logits, multiplied by ``$TEST_MULTI_WORKER_LOSS_SCALE`` on runs with more
than one worker only. With plain SGD a constant loss factor is the same constant factor on
the gradient, so a 2-worker run with factor 2 updates the weights exactly as a trainer that
summed the gradients over ranks instead of averaging them would. The tests use it to show
that the 2 x b == 1 x 2b comparison catches such a scale; nothing outside tests reads it.
"""

from __future__ import annotations

import os
from typing import Any

SCALE_ENV = "TEST_MULTI_WORKER_LOSS_SCALE"


def build_model(input_dim: int, params: dict[str, Any]) -> Any:
    from gyre.pipelines.trainer.models import build_mlp

    return build_mlp(input_dim, params)


def loss(outputs: Any, targets: Any) -> Any:
    from torch.nn import functional

    workers = int(os.environ.get("GYRE_REPLICAS", "1"))
    scale = float(os.environ.get(SCALE_ENV, "1")) if workers > 1 else 1.0
    return scale * functional.binary_cross_entropy_with_logits(outputs.reshape(-1), targets)

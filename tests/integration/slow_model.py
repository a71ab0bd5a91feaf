"""A model module for the model server's tests: the built-in MLP that can be made slow.

While the file named by ``$GYRE_TEST_SLOW_FILE`` exists, every forward pass first sleeps the
seconds written in it: a dependency that is down or late, switched on and off by the test.
Its state dict is the MLP's, so it loads any MLP artifact (``model.json`` pointed here).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gyre.pipelines.trainer.models import TabularMLP


class SlowMLP(TabularMLP):
    def forward(self, x: Any) -> Any:
        path = os.environ.get("GYRE_TEST_SLOW_FILE")
        if path and os.path.exists(path):
            time.sleep(float(Path(path).read_text() or "1"))
        return super().forward(x)


def build_model(input_dim: int, params: dict[str, Any]) -> Any:
    return SlowMLP(input_dim, tuple(int(h) for h in params.get("hidden", [64, 32])), 0.0)

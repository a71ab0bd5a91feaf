"""The bench's baseline: the same network in a minimal KServe `ModelServer`, no Gyre code.

``python -m gyre.bench.bare_modelserver <model.pt> <port>``: rebuilds the MLP from the state
dict alone (linear layers with ReLU between them) and answers V1 ``:predict`` with
``{"instances": [[float, ...], ...]}`` already preprocessed: one forward per request, sigmoid
out, nothing else.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import torch
from kserve import Model, ModelServer
from torch import nn


class BareModel(Model):  # type: ignore[misc]  # kserve ships no type information
    def __init__(self, path: str) -> None:
        super().__init__("bare")
        self.path = path
        self.net: nn.Module | None = None

    def load(self) -> bool:
        torch.set_num_threads(1)
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        weights = sorted((k for k in state if k.endswith(".weight")), key=lambda k: int(k.split(".")[-2]))
        layers: list[nn.Module] = []
        renamed: dict[str, torch.Tensor] = {}
        for i, key in enumerate(weights):
            out_dim, in_dim = state[key].shape
            layers.append(nn.Linear(in_dim, out_dim))
            renamed[f"{len(layers) - 1}.weight"] = state[key]
            renamed[f"{len(layers) - 1}.bias"] = state[key.removesuffix("weight") + "bias"]
            if i < len(weights) - 1:
                layers.append(nn.ReLU())
        net = nn.Sequential(*layers)
        net.load_state_dict(renamed)
        self.net = net.eval()
        self.ready = True
        return True

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        assert self.net is not None
        with torch.no_grad():
            out = torch.sigmoid(self.net(torch.tensor(payload["instances"], dtype=torch.float32)).reshape(-1))
        return {"predictions": out.tolist()}


if __name__ == "__main__":
    model = BareModel(sys.argv[1])
    model.load()
    server = ModelServer(
        http_port=int(sys.argv[2]), enable_grpc=False, workers=1, enable_latency_logging=False
    )
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    server.start([model])

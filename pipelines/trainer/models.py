"""Models: the built-in tabular MLP, user modules, and the loss for each task.

User code is referenced as ``"pkg.mod:build_model"`` with ``params``; the interface is::

    def build_model(input_dim: int, params: dict) -> torch.nn.Module: ...
    # optional, in the same module:
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

The module takes the preprocessed float tensor ``[batch, input_dim]`` and returns ``[batch]``
or ``[batch, 1]``: a logit for binary classification, the value for regression. The artifact
stores the reference and params, so serving rebuilds the same module (the package must be
importable there too).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from gyre.pipelines.trainer.config import ConfigError, ModelConfig
from torch import nn
from torch.optim.adam import Adam
from torch.optim.adamw import AdamW
from torch.optim.optimizer import Optimizer
from torch.optim.sgd import SGD

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TabularMLP(nn.Module):
    """Linear → ReLU → Dropout blocks, then one output unit."""

    def __init__(self, input_dim: int, hidden: Sequence[int] = (64, 32), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x).squeeze(-1)
        return out


def build_mlp(input_dim: int, params: Mapping[str, Any]) -> nn.Module:
    unknown = set(params) - {"hidden", "dropout"}
    if unknown:
        raise ConfigError(f"unknown mlp params {sorted(unknown)} (known: hidden, dropout)")
    hidden = params.get("hidden", [64, 32])
    return TabularMLP(input_dim, tuple(int(h) for h in hidden), float(params.get("dropout", 0.0)))


def _resolve(reference: str) -> tuple[Any, Callable[..., nn.Module]]:
    mod_name, sep, attr = reference.partition(":")
    if not sep:
        raise ConfigError(f"model.module must look like 'pkg.mod:build_model', got {reference!r}")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"cannot import model module {mod_name!r}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{reference!r}: {attr} is not a function of {mod_name}")
    return module, fn


def build_model(cfg: ModelConfig, input_dim: int) -> nn.Module:
    if cfg.kind == "mlp":
        return build_mlp(input_dim, cfg.params)
    assert cfg.module is not None
    _, fn = _resolve(cfg.module)
    model = fn(input_dim, dict(cfg.params))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{cfg.module} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_loss(cfg: ModelConfig) -> LossFn:
    if cfg.kind == "module" and cfg.module:
        module, _ = _resolve(cfg.module)
        user = getattr(module, "loss", None)
        if callable(user):
            return user  # type: ignore[no-any-return]
    if cfg.task == "binary_classification":
        return nn.functional.binary_cross_entropy_with_logits
    return nn.functional.mse_loss


def predict_output(cfg_task: str, outputs: torch.Tensor) -> torch.Tensor:
    """Model outputs → predictions: probabilities for classification, values for regression."""
    out = outputs.reshape(-1)
    return torch.sigmoid(out) if cfg_task == "binary_classification" else out


def build_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> Optimizer:
    if name == "sgd":
        # plain SGD, no momentum: the update is lr x gradient, so it is the optimizer that
        # shows whether the distributed gradient is the mean over ranks (Adam hides a scale)
        return SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, lr=lr, weight_decay=weight_decay)
    return Adam(params, lr=lr, weight_decay=weight_decay)

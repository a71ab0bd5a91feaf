"""The model artifact a TrainingJob writes and an InferenceService loads.

Layout of the output directory (a path or ``file://`` URI)::

    model.pt            the network's state dict (torch.save)
    model.json          how to rebuild the network: kind (mlp|module), module reference,
                        params, task, input_dim
    preprocessing.json  the fitted `Preprocessor` (feature order, scaling, vocabularies)
    metadata.json       metrics, hyperparameters, features and types, dataset location and
                        version, code version, created time, model version
    reference.npy       a sample of the training rows as the network sees them (preprocessed):
                        the training distribution that serving inputs are compared with (drift)

`load` returns a `Model` whose ``predict(rows)`` applies the same preprocessing as training
did, so serving cannot drift from it. The directory is written next to its final place and
renamed into it, so a reader never sees a half-written artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from gyre.pipelines.trainer.config import ModelConfig, uri_to_path
from gyre.pipelines.trainer.models import build_model, predict_output
from gyre.pipelines.trainer.preprocessing import Preprocessor, rows_to_columns
from torch import nn

MODEL_FILE = "model.pt"
MODEL_SPEC_FILE = "model.json"
PREPROCESSING_FILE = "preprocessing.json"
METADATA_FILE = "metadata.json"
REFERENCE_FILE = "reference.npy"
REFERENCE_ROWS = 2000


def save(
    uri: str,
    model: nn.Module,
    model_cfg: ModelConfig,
    input_dim: int,
    preprocessor: Preprocessor,
    metadata: Mapping[str, Any],
    reference: npt.NDArray[Any] | None = None,
) -> Path:
    """``reference``: preprocessed training rows (at most `REFERENCE_ROWS` are kept)."""
    target = uri_to_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / MODEL_FILE)
        spec = {
            "kind": model_cfg.kind,
            "module": model_cfg.module,
            "params": dict(model_cfg.params),
            "task": model_cfg.task,
            "input_dim": input_dim,
        }
        _write(tmp / MODEL_SPEC_FILE, spec)
        _write(tmp / PREPROCESSING_FILE, preprocessor.to_dict())
        _write(tmp / METADATA_FILE, dict(metadata))
        if reference is not None:
            np.save(tmp / REFERENCE_FILE, np.asarray(reference[:REFERENCE_ROWS], dtype=np.float32))
        if target.exists():
            # swap: move the old artifact aside, then the new one in
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


class Model:
    """A loaded artifact: ``predict(rows)`` → probabilities (classification) or values."""

    def __init__(
        self, network: nn.Module, preprocessor: Preprocessor, task: str, metadata: dict[str, Any]
    ) -> None:
        self.network = network.eval()
        self.preprocessor = preprocessor
        self.task = task
        self.metadata = metadata
        self.reference: npt.NDArray[Any] | None = None  # preprocessed training rows, if saved

    @property
    def features(self) -> list[dict[str, str]]:
        return self.preprocessor.features

    @property
    def version(self) -> str:
        return str(self.metadata.get("model_version", ""))

    def predict(self, rows: Any) -> list[float]:
        """Rows: a list of dicts, a dict of columns, a pyarrow Table or a pandas DataFrame."""
        return self.predict_transformed(self.preprocessor.transform(rows_to_columns(rows)))

    def predict_transformed(self, x: npt.NDArray[Any]) -> list[float]:
        """Predictions for rows already preprocessed (`transform`)."""
        with torch.no_grad():
            out = predict_output(self.task, self.network(torch.from_numpy(x)))
        return [float(v) for v in out.numpy()]

    def predict_labels(self, rows: Any, threshold: float = 0.5) -> list[int]:
        """Binary classification: class 1 where the probability reaches ``threshold``."""
        return [int(p >= threshold) for p in self.predict(rows)]

    def transform(self, rows: Any) -> npt.NDArray[Any]:
        """The preprocessed feature matrix the network sees."""
        return self.preprocessor.transform(rows_to_columns(rows))


def load(uri: str) -> Model:
    root = uri_to_path(uri)
    spec = json.loads((root / MODEL_SPEC_FILE).read_text(encoding="utf-8"))
    pre = Preprocessor.from_dict(json.loads((root / PREPROCESSING_FILE).read_text("utf-8")))
    metadata = json.loads((root / METADATA_FILE).read_text(encoding="utf-8"))
    cfg = ModelConfig(kind=spec["kind"], task=spec["task"], module=spec.get("module"), params=spec["params"])
    network = build_model(cfg, int(spec["input_dim"]))
    state = torch.load(root / MODEL_FILE, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    model = Model(network, pre, cfg.task, metadata)
    if (root / REFERENCE_FILE).exists():
        model.reference = np.load(root / REFERENCE_FILE)
    return model

"""What a TrainingJob's launcher serves on ``/status`` (the TrainingJob controller reads it).

Rank 0 sends its `TrainerProgress` to the launcher at every log interval and phase change
(``PUT /gyre/progress``); the launcher serves it with the gang's state as `TrainerStatus`.
The launcher is the one workload that lives for the whole run (workers come and go with
restarts), so it is where the run's progress is read; it keeps answering for a while after
the gang ended, until the final status has been read once.
"""

from __future__ import annotations

from gyre.pipelines._common.status import StatusDoc


class TrainerProgress(StatusDoc):
    phase: str = "starting"  # starting | running | succeeded | failed
    epoch: int = 0  # current epoch, 0-based
    epochs: int = 0
    step: int = 0  # global optimizer steps done
    total_steps: int = 0
    percent: float = 0.0  # 100 * step / total_steps
    eta_s: float | None = None  # seconds left at the recent pace
    samples_per_s: float | None = None  # global throughput, all workers
    step_time_s: float | None = None  # mean wall time of one step
    allreduce_time_s: float | None = None  # mean time a step waited for the gradient allreduce
    train_loss: float | None = None  # mean training loss over the last interval
    # latest validation metrics (val_loss, val_accuracy, ...), the epoch and train_loss
    metrics: dict[str, float | None] = {}
    # the metrics after each epoch so far, oldest first (as metrics, with the epoch from 0)
    history: list[dict[str, float | None]] = []
    resumed_from_step: int | None = None  # the checkpoint step this run resumed from
    workers: int = 0
    backend: str = ""
    artifact: str | None = None  # the model's URI once written
    features: list[str] = []  # the model's input columns, once written
    message: str = ""
    updated_at: str = ""  # RFC 3339


class GangStatus(StatusDoc):
    phase: str  # gathering | running | succeeded | failed
    message: str = ""
    size: int = 0
    joined: list[int] = []
    done: list[int] = []


class TrainerStatus(StatusDoc):
    gang: GangStatus
    progress: TrainerProgress | None = None  # None until rank 0 first reported

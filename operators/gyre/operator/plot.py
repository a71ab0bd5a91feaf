"""``gyre experiment plot NAME``: an Experiment drawn as PNGs — a search by Optuna's
visualisation module, an online test as its posteriors and its allocation over time.

The study is rebuilt from the Experiment's trial TrainingJobs exactly as the controller
rebuilds it (`gyre.controllers.search`), then drawn with Optuna's matplotlib plots into PNG
files: the optimisation history, the parameter importances, the parallel coordinates and the
per-epoch (intermediate) values; with several objectives, the Pareto front. A plot that the
results cannot support yet (importances need two completed trials) is skipped and named.

An online Experiment is drawn from its status: each variant's posterior of its reward rate
(Beta(1 + conversions, 1 + requests - conversions) for conversions, the Normal of the mean's
interval for continuous rewards) and the allocation of the traffic over time.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gyre.api import API_VERSION
from gyre.api.experiment import ExperimentSpec, ExperimentStatus, OnlineVariantStatus
from gyre.builders.experiment import TRAINING_JOB
from gyre.controllers.search import Search, trials_from_children
from gyre.core.workload import Owner
from gyre.operator.children import child_state
from gyre.runtimes import k8s_render as r
from gyre.runtimes.shapes import ResourceKind

EXPERIMENTS = ResourceKind("Experiment", API_VERSION, "experiments")
TRIALS = ResourceKind(TRAINING_JOB.kind, TRAINING_JOB.api_version, TRAINING_JOB.plural)


def load_experiment(api_client: Any, namespace: str, name: str) -> tuple[dict[str, Any], ExperimentSpec]:
    from gyre.runtimes.kube_api import KubeApi

    body = KubeApi(api_client).get(EXPERIMENTS, namespace, name)
    if body is None:
        raise SystemExit(f"gyre experiment plot: no Experiment {name!r} in namespace {namespace}")
    return dict(body), ExperimentSpec.model_validate(body.get("spec") or {})


def load_search(api_client: Any, body: dict[str, Any], spec: ExperimentSpec) -> Search:
    """The study of the Experiment ``body`` (a search), rebuilt from its trials in the API server."""
    from gyre.runtimes.kube_api import KubeApi

    assert spec.search is not None
    kube = KubeApi(api_client)
    namespace, name = str(body["metadata"]["namespace"]), str(body["metadata"]["name"])
    owner = Owner(kind="Experiment", namespace=namespace, name=name, uid=str(body["metadata"]["uid"]))
    children = {}
    for obj in kube.list(TRIALS, namespace, r.owner_selector(owner)):
        state = child_state(TRAINING_JOB, obj)
        children[state.key] = state
    return Search(f"{namespace}/{name}", spec.search, trials_from_children(children, spec.search))


def plot(search: Search, out: Path) -> tuple[list[Path], list[str]]:
    """Write the PNGs into ``out``: the files written, and the plots skipped (with why)."""
    import warnings

    import matplotlib
    from optuna.exceptions import ExperimentalWarning

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    from optuna.visualization import matplotlib as vis

    goals = search.spec.goals
    names = [g.metric for g in goals]
    study = search.study
    first: Callable[[Any], float] | None = None
    if len(goals) > 1:

        def first(t: Any) -> float:
            return float(t.values[0])

    kw: dict[str, Any] = {"target": first, "target_name": names[0]} if first else {"target_name": names[0]}
    plots: dict[str, Callable[[], Any]] = {
        "history": lambda: vis.plot_optimization_history(study, **kw),
        "importances": lambda: vis.plot_param_importances(study, **kw),
        "parallel-coordinates": lambda: vis.plot_parallel_coordinate(study, **kw),
    }
    if len(goals) > 1:
        plots["pareto-front"] = lambda: vis.plot_pareto_front(study, target_names=names)
    else:
        plots["intermediate-values"] = lambda: vis.plot_intermediate_values(study)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []
    for key, draw in plots.items():
        try:
            ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped.append(f"{key}: {exc}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        written.append(_save(fig, out / f"{key}.png"))
    return written, skipped


def _save(fig: Any, path: Path) -> Path:
    """Write the figure as a PNG and free it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _density(v: OnlineVariantStatus, reward: str, x: Any) -> Any:
    """The variant's posterior density of its rate on ``x`` (None: not enough data)."""
    import numpy as np

    if not v.requests or v.rate is None:
        return None
    if reward == "conversion":
        a = 1.0 + v.rate * v.requests
        b = 1.0 + v.requests - v.rate * v.requests
        log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        inner = np.clip(x, 1e-12, 1 - 1e-12)
        return np.exp(log_norm + (a - 1) * np.log(inner) + (b - 1) * np.log1p(-inner))
    if not v.interval:
        return None
    sd = max((v.interval[1] - v.interval[0]) / (2 * 1.959964), 1e-12)
    return np.exp(-0.5 * ((x - v.rate) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def plot_online(spec: ExperimentSpec, status: ExperimentStatus, out: Path) -> tuple[list[Path], list[str]]:
    """Posteriors and allocation over time into ``out``: the files written, the plots skipped."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert spec.online is not None
    reward = spec.online.analysis.reward
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []
    with_data = [v for v in status.variants if v.requests and v.rate is not None]
    if with_data:
        spreads = [v.interval[1] - v.interval[0] if v.interval else 0.0 for v in with_data]
        rates = [float(v.rate or 0.0) for v in with_data]
        span = max(max(spreads), 1e-3)
        lo, hi = min(rates) - 2 * span, max(rates) + 2 * span
        if reward == "conversion":
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        x = np.linspace(lo, hi, 800)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for v in with_data:
            y = _density(v, reward, x)
            if y is None:
                continue
            label = f"{v.name}: {v.rate:.4f} over {v.requests} requests"
            if v.p_best is not None:
                label += f", P(best) {v.p_best:.3f}"
            ax.plot(x, y, label=label)
            ax.fill_between(x, y, alpha=0.15)
        ax.set_xlabel(f"{spec.online.analysis.metric} rate")
        ax.set_ylabel("posterior density")
        title = "Posteriors of the variants' reward rates"
        if status.winner:
            title += f" (winner: {status.winner})"
        ax.set_title(title)
        ax.legend(loc="best", fontsize="small")
        written.append(_save(fig, out / "posteriors.png"))
    else:
        skipped.append("posteriors: no variant has answered a request yet")
    if len(status.history) >= 2:
        start = status.history[0].time
        t = [(p.time - start) / 60.0 for p in status.history]
        names = [v.name for v in spec.online.variants]
        shares = [[p.allocation.get(n, 0.0) for p in status.history] for n in names]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.stackplot(t, shares, labels=names, step="post")
        ax.set_ylim(0, 1)
        ax.set_xlabel("minutes since the first point")
        ax.set_ylabel("share of the traffic")
        ax.set_title(f"Allocation over time ({spec.online.allocation.policy})")
        ax.legend(loc="upper left", fontsize="small")
        written.append(_save(fig, out / "allocation.png"))
    else:
        skipped.append("allocation: fewer than two points of history yet")
    return written, skipped


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gyre experiment plot", description=__doc__.splitlines()[0])
    p.add_argument("name", help="the Experiment")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-o", "--out", type=Path, default=None, help="directory for the PNGs (default ./NAME)")
    args = p.parse_args(argv)
    from gyre.operator.main import kube_api_client

    client = kube_api_client()
    out = args.out or Path(args.name)
    body, spec = load_experiment(client, args.namespace, args.name)
    if spec.online is not None:
        status = ExperimentStatus.model_validate(body.get("status") or {})
        written, skipped = plot_online(spec, status, out)
    elif spec.search is not None:
        written, skipped = plot(load_search(client, body, spec), out)
    else:
        raise SystemExit(f"gyre experiment plot: Experiment {args.name!r} has neither search nor online")
    for path in written:
        print(path)
    for why in skipped:
        print(f"skipped {why}", file=sys.stderr)
    return 0 if written else 1

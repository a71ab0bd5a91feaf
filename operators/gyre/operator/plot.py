"""``gyre experiment plot NAME``: an Experiment's search drawn by Optuna's visualisation module.

The study is rebuilt from the Experiment's trial TrainingJobs exactly as the controller
rebuilds it (`gyre.controllers.search`), then drawn with Optuna's matplotlib plots into PNG
files: the optimisation history, the parameter importances, the parallel coordinates and the
per-epoch (intermediate) values; with several objectives, the Pareto front. A plot that the
results cannot support yet (importances need two completed trials) is skipped and named.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gyre.api import API_VERSION
from gyre.api.experiment import ExperimentSpec
from gyre.builders.experiment import TRAINING_JOB
from gyre.controllers.search import Search, trials_from_children
from gyre.core.workload import Owner
from gyre.operator.children import child_state
from gyre.runtimes import k8s_render as r
from gyre.runtimes.shapes import ResourceKind

EXPERIMENTS = ResourceKind("Experiment", API_VERSION, "experiments")
TRIALS = ResourceKind(TRAINING_JOB.kind, TRAINING_JOB.api_version, TRAINING_JOB.plural)


def load_search(api_client: Any, namespace: str, name: str) -> Search:
    """The Experiment's study, rebuilt from what the API server holds."""
    from gyre.runtimes.kube_api import KubeApi

    kube = KubeApi(api_client)
    body = kube.get(EXPERIMENTS, namespace, name)
    if body is None:
        raise SystemExit(f"gyre experiment plot: no Experiment {name!r} in namespace {namespace}")
    spec = ExperimentSpec.model_validate(body.get("spec") or {})
    if spec.search is None:
        raise SystemExit(f"gyre experiment plot: Experiment {name!r} is not a search (spec.search)")
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
    import matplotlib.pyplot as plt
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
        path = out / f"{key}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written, skipped


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gyre experiment plot", description=__doc__.splitlines()[0])
    p.add_argument("name", help="the Experiment")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("-o", "--out", type=Path, default=None, help="directory for the PNGs (default ./NAME)")
    args = p.parse_args(argv)
    from gyre.operator.main import kube_api_client

    search = load_search(kube_api_client(), args.namespace, args.name)
    written, skipped = plot(search, args.out or Path(args.name))
    for path in written:
        print(path)
    for why in skipped:
        print(f"skipped {why}", file=sys.stderr)
    return 0 if written else 1

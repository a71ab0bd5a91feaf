"""``gyre bench bandit``: allocation policies and sequential testing, simulated.

Prints one JSON object, every figure from the same run:

* ``scenarios``: for each set of Bernoulli arms — ``ab``, the 7% vs 8% click-through of the
  A/B example, and ``four_arms``, 5%, 6%, 7% and 8% — the mean cumulative (pseudo-)regret
  over ``--seeds`` seeds of ``--requests`` requests for Thompson sampling, epsilon-greedy
  (``--epsilon``), UCB1 and a uniform split; ``thompson_over_egreedy`` (goal <= 0.5) and
  ``thompson_over_uniform``. The policies are the router's own (`gyre.stats.bandits`): as in
  production, weights are recomputed every ``--batch`` requests from the outcomes so far and
  the requests in between are drawn from them;
* ``sequential_aa_fpr``: in ``--aa-runs`` A/A experiments (both arms at the first rate),
  looked at every ``--look-every`` requests per arm up to ``--aa-requests``, the share in
  which the mSPRT's always-valid p-value ever fell below 0.05 (goal <= 0.05), next to
  ``naive_aa_fpr``, the same share for a two-proportion z-test read at every look;
* ``goals``: ``{name: {value, goal, met}}``; reported, never asserted.

``--plot PATH`` writes regret over time per policy and scenario as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

from gyre.stats.bandits import UCB, ArmStats, EpsilonGreedy, Fixed, Policy, Thompson
from gyre.stats.sequential import always_valid_pvalues

FloatArray = npt.NDArray[np.float64]

GOAL_THOMPSON_OVER_EGREEDY = 0.5
GOAL_SEQUENTIAL_AA_FPR = 0.05
ALPHA = 0.05


def _log(msg: str) -> None:
    print(f"[bench bandit] {msg}", file=sys.stderr, flush=True)


def simulate_regret(
    policy: Policy, rates: Sequence[float], requests: int, batch: int, rng: np.random.Generator
) -> FloatArray:
    """Cumulative pseudo-regret after each batch (requests x gap of the arm chosen)."""
    p = np.asarray(rates, dtype=float)
    gaps = p.max() - p
    arms = [ArmStats() for _ in rates]
    steps = requests // batch
    regret = np.empty(steps)
    total = 0.0
    for step in range(steps):
        weights = np.asarray(policy.allocate(arms))
        counts = rng.multinomial(batch, weights / weights.sum())
        wins = rng.binomial(counts, p)
        arms = [
            ArmStats(a.trials + int(n), a.reward_sum + float(w), a.reward_sq_sum + float(w))
            for a, n, w in zip(arms, counts, wins, strict=True)
        ]
        total += float(counts @ gaps)
        regret[step] = total
    return regret


def aa_false_positive_rates(
    rate: float, runs: int, requests: int, look_every: int, tau2: float, rng: np.random.Generator
) -> tuple[float, float]:
    """(sequential, naive) shares of A/A runs declared significant at any look."""
    looks = requests // look_every
    wins_a = rng.binomial(look_every, rate, size=(runs, looks)).cumsum(axis=1)
    wins_b = rng.binomial(look_every, rate, size=(runs, looks)).cumsum(axis=1)
    n = look_every * np.arange(1, looks + 1)
    mean_a, mean_b = wins_a / n, wins_b / n
    s2 = (mean_a * (1 - mean_a) + mean_b * (1 - mean_b)) / n
    p_seq = always_valid_pvalues(mean_b - mean_a, s2, tau2)
    seq = float((p_seq.min(axis=1) < ALPHA).mean())
    pooled = (wins_a + wins_b) / (2 * n)
    se = np.sqrt(pooled * (1 - pooled) * 2 / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (mean_b - mean_a) / se, 0.0)
    p_naive = 2 * sps.norm.sf(np.abs(z))
    naive = float((p_naive.min(axis=1) < ALPHA).mean())
    return seq, naive


def _goal(value: float, goal: float) -> dict[str, Any]:
    return {"value": round(value, 4), "goal": f"<= {goal}", "met": value <= goal}


SCENARIOS: dict[str, tuple[float, ...]] = {"ab": (0.07, 0.08), "four_arms": (0.05, 0.06, 0.07, 0.08)}


def _plot(path: str, curves: dict[str, dict[str, FloatArray]], batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (scenario, by_policy) in zip(axes[0], curves.items(), strict=True):
        for name, curve in by_policy.items():
            ax.plot(batch * np.arange(1, curve.size + 1), curve, label=name)
        ax.set_xlabel("requests")
        ax.set_ylabel("cumulative regret (mean over seeds)")
        ax.set_title(f"{scenario}: arms {list(SCENARIOS[scenario])}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scenario(
    rates: Sequence[float], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, FloatArray]]:
    k = len(rates)
    policies: list[Policy] = [
        Thompson(),
        EpsilonGreedy(args.epsilon),
        UCB(),
        Fixed(tuple([1.0] * k), name="uniform"),
    ]
    curves: dict[str, FloatArray] = {}
    seconds: dict[str, float] = {}
    for policy in policies:
        t0 = time.perf_counter()
        runs = [
            simulate_regret(policy, rates, args.requests, args.batch, np.random.default_rng(seed))
            for seed in range(args.seeds)
        ]
        curves[policy.name] = np.mean(runs, axis=0)
        seconds[policy.name] = round(time.perf_counter() - t0, 2)
        _log(
            f"arms {list(rates)} {policy.name}: "
            f"regret {curves[policy.name][-1]:.1f} ({seconds[policy.name]} s)"
        )
    final = {name: float(c[-1]) for name, c in curves.items()}
    t_over_e = final["thompson"] / final["epsilonGreedy"] if final["epsilonGreedy"] else float("inf")
    return {
        "rates": list(rates),
        "regret": {name: round(v, 2) for name, v in final.items()},
        "seconds": seconds,
        "thompson_over_egreedy": round(t_over_e, 4),
        "thompson_over_uniform": round(final["thompson"] / final["uniform"], 4),
    }, curves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gyre bench bandit", description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500, help="requests between two allocation updates")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--aa-runs", type=int, default=2000)
    ap.add_argument("--aa-requests", type=int, default=20_000, help="requests per arm in each A/A run")
    ap.add_argument("--look-every", type=int, default=200, help="requests per arm between two looks")
    ap.add_argument("--tau", type=float, default=0.01, help="mSPRT mixing sd (the lift it targets)")
    ap.add_argument("--plot", help="write a PNG of regret over time here")
    args = ap.parse_args(argv)
    scenarios: dict[str, Any] = {}
    curves: dict[str, dict[str, FloatArray]] = {}
    for name in args.scenarios:
        scenarios[name], curves[name] = _scenario(SCENARIOS[name], args)
    t0 = time.perf_counter()
    aa_rate = SCENARIOS["ab"][0]
    seq_fpr, naive_fpr = aa_false_positive_rates(
        aa_rate, args.aa_runs, args.aa_requests, args.look_every, args.tau**2, np.random.default_rng(10_000)
    )
    _log(f"A/A: sequential {seq_fpr:.3f}, naive {naive_fpr:.3f} ({time.perf_counter() - t0:.1f} s)")
    goals = {
        f"thompson_over_egreedy.{name}": _goal(sc["thompson_over_egreedy"], GOAL_THOMPSON_OVER_EGREEDY)
        for name, sc in scenarios.items()
    }
    goals["sequential_aa_fpr"] = _goal(seq_fpr, GOAL_SEQUENTIAL_AA_FPR)
    out: dict[str, Any] = {
        "requests": args.requests,
        "batch": args.batch,
        "seeds": args.seeds,
        "epsilon": args.epsilon,
        "scenarios": scenarios,
        "aa": {
            "rate": aa_rate,
            "runs": args.aa_runs,
            "requests_per_arm": args.aa_requests,
            "looks": args.aa_requests // args.look_every,
            "tau": args.tau,
        },
        "sequential_aa_fpr": round(seq_fpr, 4),
        "naive_aa_fpr": round(naive_fpr, 4),
        "goals": goals,
    }
    if args.plot:
        _plot(args.plot, curves, args.batch)
        out["plot"] = args.plot
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

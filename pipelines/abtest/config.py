"""The A/B analysis workload's configuration: a frozen dataclass, JSON in ``$GYRE_CONFIG``.

The Experiment's builder renders `AbTestConfig.to_json()` into the workload's config file.
``bootstrap_servers`` may refer to environment variables as ``$(VAR)`` (Kubernetes' syntax,
as the router's backend URLs do); ``$GYRE_PORT_HTTP`` and ``$GYRE_PORT_METRICS`` override the
ports. The file is read once, at start.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gyre.pipelines._common.env import (
    ConfigError,
    JsonConfig,
    build_config,
    env_int,
    expand_vars,
    load_config_json,
)

REWARDS = ("bernoulli", "normal")
POLICIES = ("fixed", "epsilonGreedy", "thompson", "ucb")
METHODS = ("ttest", "bayesian", "sequential")


@dataclass(frozen=True)
class TopicRef:
    """A Kafka topic and the cluster it is on (``host:port[,...]``, may contain ``$(VAR)``)."""

    bootstrap_servers: str
    topic: str

    def __post_init__(self) -> None:
        if not self.bootstrap_servers or not self.topic:
            raise ConfigError("abtest config: a topic needs bootstrap_servers and topic")


@dataclass(frozen=True)
class AbTestConfig(JsonConfig):
    """Everything the A/B analysis needs; the JSON keys are the field names.

    * ``experiment``: the Experiment's name (a label of every metric).
    * ``variants``: the variants' names as the router logs them; the first is the control.
    * ``assignments``: the router's assignment log (``{bootstrap_servers, topic}``).
    * ``feedback``: the Stream whose events carry the outcomes (``{bootstrap_servers, topic}``).
    * ``metric``: the event field holding the reward; events without it are not outcomes.
    * ``reward``: ``bernoulli`` (a request's reward is clipped to [0, 1]: converted or not)
      or ``normal`` (a continuous reward, summed per request).
    * ``request_id_field`` / ``key_field``: the event fields naming the request, or else the
      user, an outcome belongs to.
    * ``timestamp_field``: the event field holding the event's time (epoch milliseconds or
      RFC 3339, the Stream schema's timestamp field); ``null``: the Kafka record's timestamp.
    * ``attribution_window_s``: how long after its request an outcome still counts, and how
      long an outcome waits for its request before it is unmatched.
    * ``policy``: ``fixed`` (``weights``), ``epsilonGreedy`` (``epsilon``), ``thompson`` or
      ``ucb``: the allocation reported per variant (what the router is to apply). ``ucb`` is
      UCB1, whose exploration bonus assumes rewards in [0, 1]: with ``normal`` rewards on
      another scale it explores too little or too much. ``weights`` are for ``fixed`` only.
    * ``weights``: the fixed policy's weight per variant (default: equal); the sample-ratio
      check compares the requests with them.
    * ``method``: ``ttest`` (two-proportion z-test for bernoulli, Welch for normal),
      ``bayesian`` (expected loss) or ``sequential`` (the always-valid mSPRT).
    * ``significance``: the false-positive rate of ttest and sequential.
    * ``min_samples``: requests per variant before any decision, for every method (a bandit
      policy: the requests of all variants together; see `gyre.pipelines.abtest.analysis`).
    * ``mde``: the minimum detectable effect (absolute lift): the sample size's target and
      the mSPRT's mixing scale (tau = mde).
    * ``power``: the sample size's power.
    * ``loss_threshold``: bayesian: decide when the leader's expected loss is below it.
    * ``value_remaining_level`` / ``value_remaining_threshold``: bandit policies: decide when,
      with this probability, no variant beats the leader by more than this share of its rate.
    * ``aa``: an A/A test: no winner is ever declared; the decision says whether a difference
      was (wrongly) found.
    * ``interval_s``: how often the analysis is recomputed.
    * ``host`` / ``port`` / ``metrics_port``: ``/status``, ``/metrics`` and ``/healthz`` are
      served on ``metrics_port``; ``port`` (the traffic port of other workloads) is unused.
    """

    experiment: str
    variants: tuple[str, ...]
    assignments: TopicRef
    feedback: TopicRef
    metric: str = "conversion"
    reward: str = "bernoulli"
    request_id_field: str = "request_id"
    key_field: str = "key"
    timestamp_field: str | None = None
    attribution_window_s: float = 600.0
    policy: str = "fixed"
    epsilon: float = 0.1
    weights: tuple[float, ...] | None = None
    method: str = "ttest"
    significance: float = 0.05
    min_samples: int = 1000
    mde: float = 0.01
    power: float = 0.8
    loss_threshold: float = 0.001
    value_remaining_level: float = 0.95
    value_remaining_threshold: float = 0.01
    aa: bool = False
    interval_s: float = 2.0
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 9090

    def __post_init__(self) -> None:
        where = "abtest config"
        if not self.experiment:
            raise ConfigError(f"{where}: experiment must not be empty")
        if len(self.variants) < 2 or len(set(self.variants)) != len(self.variants) or not all(self.variants):
            raise ConfigError(f"{where}: need at least two distinct, non-empty variants, got {self.variants}")
        for name, value, allowed in (
            ("reward", self.reward, REWARDS),
            ("policy", self.policy, POLICIES),
            ("method", self.method, METHODS),
        ):
            if value not in allowed:
                raise ConfigError(f"{where}: {name} {value!r} is not one of {allowed}")
        if self.weights is not None:
            if len(self.weights) != len(self.variants):
                raise ConfigError(f"{where}: {len(self.weights)} weights for {len(self.variants)} variants")
            if any(not math.isfinite(w) or w < 0 for w in self.weights) or not any(self.weights):
                raise ConfigError(f"{where}: weights must be >= 0 and not all 0, got {self.weights}")
        for name, p in (
            ("significance", self.significance),
            ("power", self.power),
            ("epsilon", self.epsilon),
            ("value_remaining_level", self.value_remaining_level),
        ):
            if not 0 < p < 1 and not (name == "epsilon" and p in (0, 1)):
                raise ConfigError(f"{where}: {name} must lie in (0, 1), got {p}")
        if self.mde <= 0 or self.loss_threshold <= 0 or self.value_remaining_threshold <= 0:
            raise ConfigError(f"{where}: mde, loss_threshold and value_remaining_threshold must be > 0")
        if self.attribution_window_s < 0 or self.interval_s <= 0 or self.min_samples < 0:
            raise ConfigError(f"{where}: attribution_window_s and min_samples must be >= 0, interval_s > 0")

    @property
    def control(self) -> str:
        return self.variants[0]

    @property
    def fixed_weights(self) -> tuple[float, ...]:
        """The fixed policy's weights (equal when none are configured)."""
        return self.weights if self.weights is not None else (1.0,) * len(self.variants)

    def resolved(self, env: Mapping[str, str]) -> AbTestConfig:
        """The configuration with ``$(VAR)`` in the bootstrap servers expanded from ``env``."""

        def topic(ref: TopicRef, field: str) -> TopicRef:
            servers = expand_vars(ref.bootstrap_servers, env)
            if "$(" in servers:
                raise ConfigError(
                    f"abtest config: {field}.bootstrap_servers ({ref.bootstrap_servers}) "
                    "refers to an unset variable"
                )
            return replace(ref, bootstrap_servers=servers)

        return replace(
            self,
            assignments=topic(self.assignments, "assignments"),
            feedback=topic(self.feedback, "feedback"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["variants"] = list(self.variants)
        d["weights"] = None if self.weights is None else list(self.weights)
        for name in ("assignments", "feedback"):
            ref: TopicRef = d[name]
            d[name] = {"bootstrap_servers": ref.bootstrap_servers, "topic": ref.topic}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AbTestConfig:
        return build_config(
            cls,
            data,
            "abtest config",
            required=("experiment", "variants", "assignments", "feedback"),
            convert={
                "variants": _strings,
                "weights": _weights,
                "assignments": _topic,
                "feedback": _topic,
            },
        )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> AbTestConfig:
        """The file ``$GYRE_CONFIG`` names, with the runtime's ports and addresses."""
        env = os.environ if env is None else env
        data = load_config_json(env)
        data["port"] = env_int(env, "GYRE_PORT_HTTP", int(data.get("port", 8080)))
        data["metrics_port"] = env_int(env, "GYRE_PORT_METRICS", int(data.get("metrics_port", 9090)))
        return cls.from_dict(data).resolved(env)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("abtest config: variants must be a list of strings")
    return tuple(value)


def _weights(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError("abtest config: weights must be a list of numbers")
    return tuple(float(v) for v in value)


def _topic(value: Any) -> TopicRef:
    if not isinstance(value, Mapping):
        raise ConfigError("abtest config: assignments and feedback must be objects")
    return build_config(TopicRef, value, "abtest config: topic", required=("bootstrap_servers", "topic"))

"""The router's configuration: a frozen dataclass, JSON in ``$GYRE_CONFIG``, env overrides.

The route builder (`gyre.builders.route`) renders `RouterConfig.to_json()` into the workload's
config file. Backend URLs may refer to environment variables as ``$(VAR)`` (Kubernetes'
syntax): the builder writes ``http://$(GYRE_BACKEND_<NAME>)`` and the runtime puts the
backend's address in that variable (a loopback port locally, the backend's Service DNS name on
Kubernetes). ``$GYRE_PORT_HTTP`` and ``$GYRE_PORT_METRICS`` override the ports.

Everything but ``host``, ``port``, ``metrics_port`` and ``max_body_bytes`` (what the servers
are started with) takes effect when the file changes: the router rereads it every
``reload_interval_s``. That includes ``assignment_log``: a change opens a producer to the new
topic (or none) for the requests answered after it, and the old one delivers what it has
queued and closes.
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from gyre.pipelines._common.env import (
    ConfigError,
    JsonConfig,
    build_config,
    env_int,
    expand_vars,
    load_config_json,
)
from gyre.pipelines.router.policy import POLICIES


@dataclass(frozen=True)
class Backend:
    """A backend that answers its ``weight``'s share of the requests (weights are relative)."""

    name: str
    url: str  # http://host:port[/prefix]; may contain $(VAR)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("router config: a backend needs a non-empty name")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ConfigError(f"router config: backend {self.name!r} has weight {self.weight}; need >= 0")


@dataclass(frozen=True)
class Shadow:
    """A backend that gets a copy of ``percent`` percent of the requests; answers discarded."""

    name: str
    url: str
    percent: float = 100.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("router config: the shadow needs a non-empty name")
        if not 0 <= self.percent <= 100:
            raise ConfigError(f"router config: shadow percent {self.percent} is not within 0..100")


@dataclass(frozen=True)
class AssignmentLog:
    """Where every answered request's assignment (which backend, what it answered) is produced:
    ``topic`` at ``bootstrap_servers``."""

    bootstrap_servers: str
    topic: str

    def __post_init__(self) -> None:
        for field, value in (("bootstrap_servers", self.bootstrap_servers), ("topic", self.topic)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"router config: assignment_log.{field} must be a non-empty string")


@dataclass(frozen=True)
class RouterConfig(JsonConfig):
    """Everything the router needs; the JSON keys are the field names.

    * ``route``: the route's name; sticky keys are hashed with it, so keys of different
      routes are allocated independently.
    * ``backends``: where requests go, by ``policy``; at least one weight above 0.
    * ``policy``: an allocation policy's name (`gyre.pipelines.router.policy.POLICIES`).
    * ``sticky_header``: a request header (e.g. ``X-Gyre-Key``) whose value keeps a client
      on one backend; requests without it are allocated at random by weight.
    * ``shadow``: a backend that receives mirrored requests; its answers never reach clients.
    * ``timeout_s``: how long a backend may take to answer before the client gets a 502.
    * ``max_body_bytes``: larger request bodies are answered 413.
    * ``shadow_max_in_flight``: mirrored requests in flight at most; beyond it a mirror is
      dropped (and counted), so a slow shadow never slows the route down.
    * ``reload_interval_s``: how often the config file is checked for changes.
    * ``assignment_log``: a Kafka topic that gets a record per request a backend answered
      (see `gyre.pipelines.router.server`); None: no log.
    * ``host`` / ``port`` / ``metrics_port``: where traffic and ``/metrics``, ``/status``,
      ``/healthz`` are served.
    """

    route: str
    backends: tuple[Backend, ...]
    policy: str = "weighted"
    sticky_header: str | None = None
    shadow: Shadow | None = None
    timeout_s: float = 30.0
    max_body_bytes: int = 16 * 1024 * 1024
    shadow_max_in_flight: int = 64
    reload_interval_s: float = 1.0
    assignment_log: AssignmentLog | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 9090

    def __post_init__(self) -> None:
        if not self.route:
            raise ConfigError("router config: route must not be empty")
        if not self.backends:
            raise ConfigError("router config: at least one backend is required")
        names = [b.name for b in self.backends] + ([self.shadow.name] if self.shadow else [])
        if len(set(names)) != len(names):
            raise ConfigError(f"router config: backend and shadow names must be unique, got {names}")
        if not any(b.weight > 0 for b in self.backends):
            raise ConfigError("router config: at least one backend needs a weight above 0")
        if self.policy not in POLICIES:
            raise ConfigError(f"router config: policy {self.policy!r} is not one of {sorted(POLICIES)}")
        if self.timeout_s <= 0 or self.reload_interval_s <= 0:
            raise ConfigError("router config: timeout_s and reload_interval_s must be above 0")

    def resolved(self, env: Mapping[str, str]) -> RouterConfig:
        """The configuration with ``$(VAR)`` in the URLs expanded from ``env``; every URL must
        then be an absolute http(s) URL."""
        backends = tuple(replace(b, url=_resolve_url(b.name, b.url, env)) for b in self.backends)
        shadow = self.shadow and replace(
            self.shadow, url=_resolve_url(self.shadow.name, self.shadow.url, env)
        )
        return replace(self, backends=backends, shadow=shadow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "backends": [{"name": b.name, "url": b.url, "weight": b.weight} for b in self.backends],
            "policy": self.policy,
            "sticky_header": self.sticky_header,
            "shadow": None
            if self.shadow is None
            else {"name": self.shadow.name, "url": self.shadow.url, "percent": self.shadow.percent},
            "timeout_s": self.timeout_s,
            "max_body_bytes": self.max_body_bytes,
            "shadow_max_in_flight": self.shadow_max_in_flight,
            "reload_interval_s": self.reload_interval_s,
            "assignment_log": None if self.assignment_log is None else asdict(self.assignment_log),
            "host": self.host,
            "port": self.port,
            "metrics_port": self.metrics_port,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouterConfig:
        return build_config(
            cls,
            data,
            "router config",
            required=("route", "backends"),
            convert={"backends": _backends, "shadow": _shadow, "assignment_log": _assignment_log},
        )

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> RouterConfig:
        """The file ``$GYRE_CONFIG`` names, with the runtime's ports and addresses."""
        env = os.environ if env is None else env
        return cls._with_env(load_config_json(env), env)

    @classmethod
    def from_text(cls, text: str | bytes, env: Mapping[str, str]) -> RouterConfig:
        """The configuration in ``text`` (the config file's content, reread), as `load` makes it."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"router config: not JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError("router config: must be a JSON object")
        return cls._with_env(data, env)

    @classmethod
    def _with_env(cls, data: dict[str, Any], env: Mapping[str, str]) -> RouterConfig:
        data["port"] = env_int(env, "GYRE_PORT_HTTP", int(data.get("port", 8080)))
        data["metrics_port"] = env_int(env, "GYRE_PORT_METRICS", int(data.get("metrics_port", 9090)))
        return cls.from_dict(data).resolved(env)


def _backends(value: Any) -> tuple[Backend, ...]:
    if not isinstance(value, list):
        raise ConfigError("router config: backends must be a list")
    if not all(isinstance(b, Mapping) for b in value):
        raise ConfigError("router config: each backend must be an object")
    return tuple(build_config(Backend, b, "router config: backend", required=("name", "url")) for b in value)


def _shadow(value: Any) -> Shadow | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError("router config: shadow must be an object")
    return build_config(Shadow, value, "router config: shadow", required=("name", "url"))


def _assignment_log(value: Any) -> AssignmentLog | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError("router config: assignment_log must be an object")
    return build_config(
        AssignmentLog, value, "router config: assignment_log", required=("bootstrap_servers", "topic")
    )


def _resolve_url(name: str, url: str, env: Mapping[str, str]) -> str:
    expanded = expand_vars(url, env)
    if "$(" in expanded:
        raise ConfigError(f"router config: the URL of {name!r} ({url}) refers to an unset variable")
    parts = urllib.parse.urlsplit(expanded)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            f"router config: the URL of {name!r} must be http(s)://host[:port][/path], got {expanded!r}"
        )
    return expanded.rstrip("/")

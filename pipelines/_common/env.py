"""Reading a workload's configuration: the JSON file named by ``$GYRE_CONFIG`` and env overrides.

Every stream workload parses its configuration once, at start, into a frozen dataclass. The
JSON file carries what the builder knows when it renders the workload; values only the runtime
knows (allocated ports, the broker's address, the replica index) arrive as environment
variables and override the file.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self, TypeVar

T = TypeVar("T")

CONFIG_ENV = "GYRE_CONFIG"
BOOTSTRAP_ENV = "GYRE_KAFKA_BOOTSTRAP"


class ConfigError(ValueError):
    """The configuration is missing or invalid; the message says which field and why."""


CONFIG_FILE_NAME = "config.json"


def config_path(env: Mapping[str, str] | None = None) -> str | None:
    """The config file ``$GYRE_CONFIG`` names (None when unset).

    ``$GYRE_CONFIG`` may also name a directory (a workload's config-files directory, e.g. a
    mounted ConfigMap); the file is then ``config.json`` in it.
    """
    env = os.environ if env is None else env
    path = env.get(CONFIG_ENV)
    if not path:
        return None
    return os.path.join(path, CONFIG_FILE_NAME) if os.path.isdir(path) else path


def parse_command_line(prog: str, config: type, argv: Sequence[str] | None = None) -> None:
    """The command line of a workload configured by ``$GYRE_CONFIG`` alone: ``--help`` prints
    what its configuration holds (``config``'s documentation) and exits; any argument is an
    error (exit status 2)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}",
        description=(
            f"Configured by the JSON object in ${CONFIG_ENV} (a file, or a directory holding "
            f"{CONFIG_FILE_NAME}); environment variables the runtime sets override some fields."
        ),
        epilog=inspect.cleandoc(config.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)


def load_config_json(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON object in the file `config_path` names (an empty dict when unset)."""
    path = config_path(env)
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {CONFIG_ENV}={path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_ENV}={path} must hold a JSON object")
    return data


def load_client_config(env: Mapping[str, str], default_port: int) -> dict[str, Any]:
    """The config file of a Kafka client with an HTTP port (collector, sink), with the
    runtime's values for the cluster address (``$GYRE_KAFKA_BOOTSTRAP``) and the port."""
    d = load_config_json(env)
    if env.get(BOOTSTRAP_ENV):
        d["bootstrap_servers"] = env[BOOTSTRAP_ENV]
    d["port"] = env_int(env, "GYRE_PORT_HTTP", int(d.get("port", default_port)))
    return d


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` is a literal ``$``, unknown names stay as is.

    The local runtime expands a workload's arguments with it, as Kubernetes does; a workload
    expands references in its config file with it (the router's backend URLs).
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, text[i : end + 1]))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ConfigError(f"{name}={raw!r} is not an integer") from e


def require(data: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """``data[key]``, checked to be of ``kind``; a `ConfigError` naming the field otherwise."""
    if key not in data:
        raise ConfigError(f"{where}: missing required field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def build_config(
    cls: type[T],
    data: Mapping[str, Any],
    what: str,
    *,
    required: tuple[str, ...] = (),
    convert: Mapping[str, Callable[[Any], Any]] | None = None,
) -> T:
    """``cls(**data)`` for a config dataclass, with errors a user can act on.

    Unknown and missing ``required`` fields, and values the dataclass rejects, become
    `ConfigError`s that start with ``what``. ``convert`` turns the JSON value of a field into
    its type (a nested object, a tuple, a string map) when the field is present.
    """
    fields = getattr(cls, "__dataclass_fields__", {})
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{what}: unknown fields {sorted(unknown)}")
    for key in required:
        if key not in data:
            raise ConfigError(f"{what}: missing required field {key!r}")
    d = dict(data)
    for key, fn in (convert or {}).items():
        if key in d:
            d[key] = fn(d[key])
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from e


def string_map(value: Any) -> dict[str, str]:
    """A JSON object of settings as strings (``null`` is empty)."""
    return {str(k): str(v) for k, v in (value or {}).items()}


class JsonConfig:
    """``to_json``/``from_json`` for a config dataclass that defines ``to_dict``/``from_dict``
    (what builders write into a workload's config file and the workload reads back)."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))

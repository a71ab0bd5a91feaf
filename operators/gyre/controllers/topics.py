"""Topic administration for the Stream controller: converging a Kafka topic to a `TopicSpec`.

The operator creates and converges topics itself, so it needs Kafka's admin protocol: this is
the one operator-side module that talks to Kafka, through confluent-kafka's `AdminClient`.
confluent-kafka is therefore a base dependency of the ``gyre`` package (a self-contained wheel
that bundles librdkafka) and the operator image installs it; what only the workloads use
(pyarrow, orjson, uvloop, torch, Horovod) stays in the ``stream``/``train`` extras. The
desired state itself, `gyre.core.topics.TopicSpec`, is pure data the builders import without
any client.

`ensure_topic` is level-triggered and safe to call on every reconcile: it creates a missing
topic, raises the partition count, and sets the topic's configuration to exactly what the spec
asks for (keys the spec sets are SET; dynamic topic overrides the spec no longer mentions are
DELETEd back to the broker default, so drift made by hand is repaired). What Kafka cannot do
in place — fewer partitions, a different replication factor — is not attempted: it is
reported in `TopicState.problems`, which the operator turns into a ``Degraded`` condition.
Requests the broker refuses for the spec's sake (a replication factor above the broker
count, an invalid config value) are problems too. Only a broker that cannot be reached or
answers with a transient error raises `TopicAdminError`, which the operator retries with
backoff.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection

# confluent_kafka.admin re-exports these without __all__, which mypy --strict flags.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from gyre.core.topics import TopicSpec

DEFAULT_TIMEOUT_S = 30.0

# Errors that say the request itself is wrong for this cluster: retrying cannot fix them, the
# spec must change.
_SPEC_ERRORS = {
    KafkaError.INVALID_REPLICATION_FACTOR,
    KafkaError.INVALID_PARTITIONS,
    KafkaError.INVALID_CONFIG,
    KafkaError.INVALID_REQUEST,
    KafkaError.POLICY_VIOLATION,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError.INVALID_REPLICA_ASSIGNMENT,
    KafkaError.TOPIC_DELETION_DISABLED,
    KafkaError._INVALID_ARG,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.UNSUPPORTED_VERSION,
}


class TopicAdminError(RuntimeError):
    """The cluster could not be asked (unreachable, timed out, transient broker error)."""


@dataclass(frozen=True)
class TopicState:
    """What the topic looks like after `ensure_topic` and what that call did.

    ``actions``: what this call changed (``created``, ``partitions 3->6``,
    ``set retention.ms=...``, ``reset x``); empty when the topic already matched.
    ``problems``: why the topic does not (fully) match the spec; empty when it does.
    """

    name: str
    exists: bool
    partitions: int = 0
    replication_factor: int = 0
    config: Mapping[str, str] = field(default_factory=dict)
    actions: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def converged(self) -> bool:
        return self.exists and not self.problems

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "exists": self.exists,
                "partitions": self.partitions,
                "replication_factor": self.replication_factor,
                "config": dict(self.config),
                "actions": list(self.actions),
                "problems": list(self.problems),
            },
            sort_keys=True,
        )


_ADMINS: dict[str, AdminClient] = {}
_ADMINS_LOCK = threading.Lock()


def admin_client(bootstrap: str) -> AdminClient:
    """A shared AdminClient per bootstrap address.

    librdkafka clients own threads and connections and have no explicit close; one per
    cluster, reused across reconciles, keeps an operator from accumulating them.
    """
    with _ADMINS_LOCK:
        admin = _ADMINS.get(bootstrap)
        if admin is None:
            conf: dict[str, Any] = {
                "bootstrap.servers": bootstrap,
                "client.id": "gyre-topic-admin",
                # Connection errors go to Python logging, not straight to stderr.
                "logger": logging.getLogger("gyre.kafka.admin"),
            }
            admin = AdminClient(conf)
            _ADMINS[bootstrap] = admin
        return admin


def _error_of(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def _is_spec_error(exc: BaseException) -> bool:
    err = _error_of(exc)
    return err is not None and err.code() in _SPEC_ERRORS


def _describe(admin: AdminClient, name: str, timeout_s: float) -> tuple[int, int] | None:
    """(partitions, replication factor) of the topic, or None when it does not exist."""
    futures = admin.describe_topics(TopicCollection([name]), request_timeout=timeout_s)
    try:
        desc = futures[name].result(timeout=timeout_s + 5)
    except KafkaException as e:
        err = _error_of(e)
        if err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        raise TopicAdminError(f"describing topic {name} failed: {e}") from e
    except TimeoutError as e:
        raise TopicAdminError(f"describing topic {name} timed out") from e
    parts = list(desc.partitions)
    rf = min((len(p.replicas) for p in parts), default=0)
    return len(parts), rf


def _describe_soon(admin: AdminClient, name: str, timeout_s: float) -> tuple[int, int] | None:
    """`_describe`, waiting briefly for a just-created topic's metadata to propagate."""
    deadline = time.monotonic() + min(timeout_s, 10.0)
    while True:
        current = _describe(admin, name, timeout_s)
        if current is not None or time.monotonic() > deadline:
            return current
        time.sleep(0.2)


def _describe_config(admin: AdminClient, name: str, timeout_s: float) -> dict[str, ConfigEntry]:
    resource = ConfigResource(ResourceType.TOPIC, name)
    try:
        result: dict[str, ConfigEntry] = admin.describe_configs([resource], request_timeout=timeout_s)[
            resource
        ].result(timeout=timeout_s + 5)
    except (KafkaException, TimeoutError) as e:
        raise TopicAdminError(f"describing config of topic {name} failed: {e}") from e
    return result


def ensure_topic(
    bootstrap: str,
    spec: TopicSpec,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    admin: AdminClient | None = None,
) -> TopicState:
    """Converge topic ``spec.name`` to ``spec`` (see the module docstring); never loops."""
    admin = admin or admin_client(bootstrap)
    actions: list[str] = []
    problems: list[str] = []
    want = spec.desired_config()
    if spec.partitions < 1:
        problems.append(f"partitions must be at least 1, got {spec.partitions}")
    if spec.replication_factor < 1:
        problems.append(f"replicationFactor must be at least 1, got {spec.replication_factor}")
    if problems:
        return TopicState(name=spec.name, exists=False, problems=tuple(problems))

    current = _describe(admin, spec.name, timeout_s)
    if current is None:
        new = NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=want,
        )
        future = admin.create_topics([new], operation_timeout=timeout_s, request_timeout=timeout_s)[spec.name]
        try:
            future.result(timeout=timeout_s + 5)
        except KafkaException as e:
            err = _error_of(e)
            if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                # Created concurrently (or by an earlier call whose metadata has not reached
                # this broker yet): converge what is there once it can be described.
                current = _describe_soon(admin, spec.name, timeout_s)
                if current is None:
                    raise TopicAdminError(
                        f"topic {spec.name} exists but cannot be described (being deleted?)"
                    ) from e
            elif _is_spec_error(e):
                msg = err.str() if err is not None else str(e)
                return TopicState(name=spec.name, exists=False, problems=(f"cannot create topic: {msg}",))
            else:
                raise TopicAdminError(f"creating topic {spec.name} failed: {e}") from e
        except TimeoutError as e:
            raise TopicAdminError(f"creating topic {spec.name} timed out") from e
        else:
            return TopicState(
                name=spec.name,
                exists=True,
                partitions=spec.partitions,
                replication_factor=spec.replication_factor,
                config=want,
                actions=("created",),
            )

    partitions, rf = current
    if spec.partitions > partitions:
        future = admin.create_partitions(
            [NewPartitions(spec.name, spec.partitions)],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )[spec.name]
        try:
            future.result(timeout=timeout_s + 5)
            actions.append(f"partitions {partitions}->{spec.partitions}")
            partitions = spec.partitions
        except KafkaException as e:
            err = _error_of(e)
            if _is_spec_error(e):
                msg = err.str() if err is not None else str(e)
                problems.append(f"cannot increase partitions to {spec.partitions}: {msg}")
            else:
                raise TopicAdminError(f"adding partitions to {spec.name} failed: {e}") from e
    elif spec.partitions < partitions:
        problems.append(
            f"partitions cannot be decreased from {partitions} to {spec.partitions} "
            f"(Kafka cannot remove partitions; the topic keeps {partitions})"
        )
    if spec.replication_factor != rf:
        problems.append(
            f"replication factor change from {rf} to {spec.replication_factor} is not applied "
            "(it needs a partition reassignment)"
        )

    entries = _describe_config(admin, spec.name, timeout_s)
    ops: list[ConfigEntry] = []
    for key, value in sorted(want.items()):
        entry = entries.get(key)
        if entry is None or entry.value != value:
            ops.append(ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET))
            actions.append(f"set {key}={value}")
    dynamic = ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    for key, entry in sorted(entries.items()):
        # The client reports ``source`` as a plain int although it is typed as the enum.
        source: Any = entry.source
        if key not in want and int(source) == dynamic:
            ops.append(ConfigEntry(key, None, incremental_operation=AlterConfigOpType.DELETE))
            actions.append(f"reset {key}")
    config = {k: e.value for k, e in entries.items() if k in want and e.value is not None}
    if ops:
        resource = ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=ops)
        try:
            admin.incremental_alter_configs([resource], request_timeout=timeout_s)[resource].result(
                timeout=timeout_s + 5
            )
            config = dict(want)
        except KafkaException as e:
            err = _error_of(e)
            if _is_spec_error(e):
                msg = err.str() if err is not None else str(e)
                problems.append(f"cannot apply topic config: {msg}")
                actions = [a for a in actions if not a.startswith(("set ", "reset "))]
            else:
                raise TopicAdminError(f"altering config of {spec.name} failed: {e}") from e
        except TimeoutError as e:
            raise TopicAdminError(f"altering config of {spec.name} timed out") from e
    return TopicState(
        name=spec.name,
        exists=True,
        partitions=partitions,
        replication_factor=rf,
        config=config,
        actions=tuple(actions),
        problems=tuple(problems),
    )


def delete_topic(
    bootstrap: str,
    name: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    admin: AdminClient | None = None,
) -> bool:
    """Delete topic ``name``; True when it was deleted, False when it did not exist."""
    admin = admin or admin_client(bootstrap)
    future = admin.delete_topics([name], operation_timeout=timeout_s, request_timeout=timeout_s)[name]
    try:
        future.result(timeout=timeout_s + 5)
    except KafkaException as e:
        err = _error_of(e)
        if err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return False
        raise TopicAdminError(f"deleting topic {name} failed: {e}") from e
    except TimeoutError as e:
        raise TopicAdminError(f"deleting topic {name} timed out") from e
    return True

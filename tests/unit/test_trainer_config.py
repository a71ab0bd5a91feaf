"""TrainerConfig parsing and the topology functions the launcher and workers share."""

from __future__ import annotations

import pytest
from gyre.pipelines.trainer.config import ConfigError, TrainerConfig
from gyre.pipelines.trainer.topology import (
    build_horovod_env,
    build_slots,
    build_torch_env,
    default_iface,
    identity_from_env,
)

MINIMAL = {"dataset": {"path": "/data", "label": "y"}, "output": "/out"}


def test_config_round_trips_through_json() -> None:
    cfg = TrainerConfig.from_dict(
        {
            **MINIMAL,
            "dataset": {
                "path": "file:///d",
                "label": "y",
                "features": ["a", "b"],
                "timestamp_column": "ts",
            },
            "split": {"kind": "time", "validation_fraction": 0.3},
            "model": {"kind": "module", "module": "pkg.m:build", "params": {"w": 3}},
            "hyperparameters": {"epochs": 3, "batch_size": 8, "lr": 0.1, "optimizer": "sgd"},
            "backend": "ddp",
            "workers": 4,
            "checkpoint": {"dir": "/ckpt", "every_steps": 5},
        }
    )
    again = TrainerConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.dataset.features == ("a", "b")
    assert again.model.params == {"w": 3}
    assert str(again.status_path) == "/ckpt/status.json"


def test_defaults_are_filled_in() -> None:
    cfg = TrainerConfig.from_dict(MINIMAL)
    assert cfg.backend == "horovod"
    assert cfg.workers == 1
    assert cfg.shards == 1
    assert cfg.model.task == "binary_classification"
    assert cfg.status_path is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backend": "mpi"}, "backend"),
        ({"workers": 0}, "workers"),
        ({"unknown": 1}, "unknown field"),
        ({"split": {"kind": "time"}}, "timestamp_column"),
        ({"model": {"kind": "module"}}, "model.module"),
        ({"workers": 2, "data_shards": 3}, "multiple of workers"),
        ({"workers": 2, "data_shards": 4, "hyperparameters": {"batch_size": 3}}, "data_shards"),
        ({"hyperparameters": {"optimizer": "lbfgs"}}, "optimizer"),
    ],
)
def test_invalid_configs_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainerConfig.from_dict({**MINIMAL, **change})


def test_placement_is_one_host_locally_and_one_pod_per_worker_in_kubernetes() -> None:
    cfg = TrainerConfig.from_dict(MINIMAL)
    assert cfg.placement({}) == 0
    assert cfg.placement({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == 1
    pinned = TrainerConfig.from_dict({**MINIMAL, "workers_per_host": 2})
    assert pinned.placement({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == 2


def test_slots_on_one_host_follow_horovodrun() -> None:
    slots = build_slots(3, 0)
    assert [(s.rank, s.local_rank, s.local_size, s.cross_rank, s.cross_size) for s in slots] == [
        (0, 0, 3, 0, 1),
        (1, 1, 3, 0, 1),
        (2, 2, 3, 0, 1),
    ]
    assert {s.hostname for s in slots} == {"localhost"}


def test_slots_one_per_pod() -> None:
    slots = build_slots(3, 1)
    assert [(s.hostname, s.local_rank, s.cross_rank, s.cross_size) for s in slots] == [
        ("host-0", 0, 0, 3),
        ("host-1", 0, 1, 3),
        ("host-2", 0, 2, 3),
    ]


def test_slots_match_horovods_own_assignment() -> None:
    hosts = pytest.importorskip("horovod.runner.common.util.hosts")
    for size, per_host in [(4, 2), (5, 2), (3, 1), (4, 4)]:
        names = sorted({s.hostname for s in build_slots(size, per_host)})
        infos = [hosts.HostInfo(n, per_host) for n in names]
        theirs = hosts.get_host_assignments(infos, size, size)
        ours = build_slots(size, per_host)
        assert [vars(t) for t in theirs] == [vars(o) for o in ours]


def test_worker_env_carries_ranks_and_rendezvous() -> None:
    slot = build_slots(2, 0)[1]
    env = build_horovod_env(slot, "127.0.0.1", 4242, "lo")
    assert env["HOROVOD_RANK"] == "1"
    assert env["HOROVOD_SIZE"] == "2"
    assert env["HOROVOD_GLOO_RENDEZVOUS_PORT"] == "4242"
    assert env["HOROVOD_CONTROLLER"] == "gloo"
    assert env["HOROVOD_CPU_OPERATIONS"] == "gloo"
    assert env["HOROVOD_GLOO_IFACE"] == "lo"
    torch_env = build_torch_env(slot, "10.0.0.5", 555, None)
    assert (torch_env["RANK"], torch_env["WORLD_SIZE"], torch_env["MASTER_PORT"]) == (
        "1",
        "2",
        "555",
    )
    assert default_iface("127.0.0.1", None) == "lo"
    assert default_iface("job-launcher.ns.svc", None) is None


def test_identity_from_env() -> None:
    ident = identity_from_env(
        {"GYRE_REPLICA_INDEX": "1", "GYRE_REPLICAS": "2", "GYRE_LAUNCHER_ADDR": "launcher:29400"}
    )
    assert (ident.index, ident.replicas, ident.launcher_host, ident.launcher_port) == (
        1,
        2,
        "launcher",
        29400,
    )

"""The online store against a real redis-server: materialization, TTL enforced on read and
refreshed by re-materialization, one round trip for many entities, per-value status."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("redis", reason="redis-py is in the features extra (make setup)")

from gyre.pipelines.features.online import (
    AT_FIELD,
    OnlineRow,
    OnlineTable,
    connect,
    get_online_features,
    materialize,
)

from tests.integration.redis_fixtures import redis_url  # noqa: F401
from tests.support import eventually

pytestmark = pytest.mark.integration
PREFIX = "gyre:test:fj:"


def rows(n: int, ts_ms: int = 1_700_000_000_000) -> list[OnlineRow]:
    return [
        OnlineRow(f"u{i}", ts_ms + i, {"sessions_7d": i, "avg_s": i / 2, "plan": "pro" if i % 2 else None})
        for i in range(n)
    ]


def test_values_read_back_with_their_status_in_one_round_trip(redis_url: str) -> None:  # noqa: F811
    client = connect(redis_url)
    client.flushdb()
    assert materialize(client, PREFIX, rows(1200), ttl_s=3600, batch_size=500) == 1200
    table = OnlineTable(client, PREFIX)  # the connection is open already: no handshake counted
    before = client.info("stats")["total_commands_processed"]
    got = get_online_features(table, ["u3", "u4", "ghost"], ["sessions_7d", "avg_s", "plan", "nope"])
    after = client.info("stats")["total_commands_processed"]
    # One pipeline: one HMGET per entity, sent together (the INFO call counts itself too).
    assert after - before == 3 + 1
    u3, u4, ghost = got
    assert (u3.values["sessions_7d"].value, u3.values["sessions_7d"].status) == (3, "present")
    assert (u3.values["avg_s"].value, u3.values["plan"].value) == (1.5, "pro")
    assert u4.values["plan"].status == "missing"  # a null value is not stored
    assert u3.values["nope"].status == "missing"
    assert u3.feature_time_ms == 1_700_000_000_003
    assert all(v.status == "missing" for v in ghost.values.values())
    assert ghost.feature_time_ms is None
    assert 0 < client.pttl(PREFIX + "u3") <= 3600_000


def test_a_value_past_its_ttl_is_expired_and_rematerializing_refreshes_it(redis_url: str) -> None:  # noqa: F811
    client = connect(redis_url)
    table = OnlineTable(client, PREFIX)
    # Written "10 s ago" with a 5 s TTL: Redis still holds the key, the reader refuses it.
    old = int(time.time() * 1000) - 10_000
    materialize(client, PREFIX, rows(3), ttl_s=5, now_ms=old)
    client.pexpire(PREFIX + "u1", 60_000)  # as a lazily expiring (or restored) Redis might
    (u1,) = table.get_online_features(["u1"], ["sessions_7d"])
    assert u1.values["sessions_7d"].status == "expired"
    assert u1.values["sessions_7d"].value is None
    assert client.exists(PREFIX + "u1")
    materialize(client, PREFIX, rows(3), ttl_s=5)
    (u1,) = table.get_online_features(["u1"], ["sessions_7d"])
    assert (u1.values["sessions_7d"].status, u1.values["sessions_7d"].value) == ("present", 1)
    assert client.pttl(PREFIX + "u1") > 4000, "the key's expiry was not refreshed"
    assert int(client.hget(PREFIX + "u1", AT_FIELD)) > old


def test_expiry_in_real_time(redis_url: str) -> None:  # noqa: F811
    client = connect(redis_url)
    table = OnlineTable(client, PREFIX + "rt:")
    materialize(client, PREFIX + "rt:", rows(2), ttl_s=1)
    assert table.get_online_features(["u1"], ["sessions_7d"])[0].present

    def gone() -> None:
        assert table.get_online_features(["u1"], ["sessions_7d"])[0].values["sessions_7d"].status != "present"

    eventually(gone, timeout=5, interval=0.1)


def test_reads_are_counted_by_status_and_timed_per_feature_job(redis_url: str) -> None:  # noqa: F811
    from gyre.pipelines.features.online import READ_SECONDS, READS
    from prometheus_client import REGISTRY

    client = connect(redis_url)
    client.flushdb()
    materialize(client, PREFIX, rows(4), ttl_s=3600)
    materialize(client, PREFIX, [OnlineRow("old", 1, {"sessions_7d": 9})], ttl_s=1, now_ms=1)

    def count(status: str) -> float:
        return (
            REGISTRY.get_sample_value(READS._name + "_total", {"featurejob": "fj", "status": status}) or 0.0
        )

    def timed() -> float:
        return REGISTRY.get_sample_value(READ_SECONDS._name + "_count", {"featurejob": "fj"}) or 0.0

    before = {s: count(s) for s in ("present", "expired", "missing")}
    reads = timed()
    # u1: both present; u2: sessions present, plan missing (null: not stored); old: sessions
    # expired, plan missing (never written); ghost: both missing.
    get_online_features(OnlineTable(client, PREFIX), ["u1", "u2", "old", "ghost"], ["sessions_7d", "plan"])
    assert count("present") - before["present"] == 3
    assert count("missing") - before["missing"] == 4
    assert count("expired") - before["expired"] == 1
    assert timed() - reads == 1, "one round trip, timed once"

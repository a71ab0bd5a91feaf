"""The A/B analysis workload without Kafka: the join state machine, decoding, the config, the
analysis and its decision rules."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from gyre.pipelines._common.env import ConfigError
from gyre.pipelines.abtest.analysis import Analyst
from gyre.pipelines.abtest.config import AbTestConfig
from gyre.pipelines.abtest.decode import Malformed, decode_assignment, decode_outcome
from gyre.pipelines.abtest.join import Assignment, JoinCounts, Outcome, OutcomeJoin, VariantTotals
from gyre.pipelines.abtest.status import AbTestStatus, CountsStatus
from gyre.stats.frequentist import two_proportion_ztest, welch_ttest

W = 600.0


def _join(reward: str = "bernoulli") -> OutcomeJoin:
    return OutcomeJoin(["a", "b"], W, reward)


def _a(rid: str, variant: str = "a", t: float = 0.0, key: str | None = None, code: int = 200) -> Assignment:
    return Assignment(rid, key, variant, code, t)


def _o(rid: str | None = None, t: float = 0.0, value: float = 1.0, key: str | None = None) -> Outcome:
    return Outcome(rid, key, value, t)


# -- join -----------------------------------------------------------------------------------


def test_a_duplicate_assignment_counts_once() -> None:
    j = _join()
    assert j.add_assignment(_a("r1"))
    assert not j.add_assignment(_a("r1"))
    j.add_outcome(_o("r1", t=1))
    assert j.totals["a"] == VariantTotals(requests=1, outcomes=1, reward_sum=1, reward_sq_sum=1)
    assert j.duplicates == 1


def test_an_outcome_before_its_assignment_waits_then_joins() -> None:
    j = _join()
    j.add_outcome(_o("r1", t=5))
    assert j.counts() == JoinCounts(pending=1)
    j.add_assignment(_a("r1", "b", t=4))
    assert j.counts() == JoinCounts(joined=1)
    assert j.totals["b"].outcomes == 1


def test_the_window_edge_is_in_time_and_just_past_it_is_late() -> None:
    """Guards an off-by-one on the window: exactly attribution_window_s after still counts."""
    j = _join()
    j.add_assignment(_a("r1", t=0))
    j.add_assignment(_a("r2", t=0))
    j.add_outcome(_o("r1", t=W))
    j.add_outcome(_o("r2", t=W + 0.001))
    assert j.counts() == JoinCounts(joined=1, late=1)
    assert j.totals["a"] == VariantTotals(requests=2, outcomes=1, reward_sum=1, reward_sq_sum=1)


def test_a_waiting_outcome_is_unmatched_once_the_watermark_passes_the_window() -> None:
    j = _join()
    j.add_outcome(_o("r1", t=10))
    j.add_assignment(_a("other", t=10 + W))  # the watermark: exactly the window
    assert j.counts() == JoinCounts(pending=1)
    j.add_assignment(_a("other2", t=10 + W + 1))
    assert j.counts() == JoinCounts(unmatched=1)
    # A partition replayed late still delivers its assignment: the outcome is claimed.
    j.add_assignment(_a("r1", t=9))
    assert j.counts() == JoinCounts(joined=1)


def test_a_key_outcome_joins_the_latest_assignment_at_or_before_it() -> None:
    j = _join()
    j.add_assignment(_a("r1", "a", t=10, key="u"))
    j.add_assignment(_a("r3", "a", t=30, key="u"))
    j.add_outcome(_o(key="u", t=25))
    assert j.totals["a"].outcomes == 1
    # A later-read assignment timed between them takes the outcome over.
    j.add_assignment(_a("r2", "b", t=20, key="u"))
    assert (j.totals["a"].outcomes, j.totals["b"].outcomes) == (0, 1)
    assert j.totals["a"].reward_sum == 0
    # At the same time counts as "at or before".
    j.add_outcome(_o(key="u", t=30))
    assert j.totals["a"].outcomes == 1
    assert j.counts() == JoinCounts(joined=2)


def test_a_key_outcome_without_an_earlier_assignment_waits() -> None:
    j = _join()
    j.add_assignment(_a("r1", t=50, key="u"))
    j.add_outcome(_o(key="u", t=40))
    assert j.counts() == JoinCounts(pending=1)
    j.add_assignment(_a("r0", "b", t=39, key="u"))
    assert j.counts() == JoinCounts(joined=1)
    assert j.totals["b"].outcomes == 1


def test_bernoulli_rewards_clip_per_request_and_normal_rewards_sum_exactly() -> None:
    jb, jn = _join("bernoulli"), _join("normal")
    for j in (jb, jn):
        j.add_assignment(_a("r1", t=0))
        j.add_assignment(_a("r2", t=0))
        for rid, v in (("r1", 1), ("r1", 1), ("r2", 3), ("r2", 2)):
            j.add_outcome(_o(rid, t=1, value=v))
    assert jb.totals["a"] == VariantTotals(requests=2, outcomes=2, reward_sum=2, reward_sq_sum=2)
    assert jn.totals["a"] == VariantTotals(requests=2, outcomes=2, reward_sum=7, reward_sq_sum=4 + 25)


def test_only_2xx_assignments_are_requests() -> None:
    j = _join()
    j.add_assignment(_a("r1", code=502))
    j.add_outcome(_o("r1", t=1))
    assert j.totals["a"] == VariantTotals()
    assert j.counts() == JoinCounts(joined=1)


def test_the_totals_do_not_depend_on_the_order_records_arrive_in() -> None:
    """The topics are replayed in a different interleaving after every restart."""
    rng = random.Random(7)
    records: list[Assignment | Outcome] = []
    for i in range(300):
        key = f"u{i % 40}"
        t = rng.uniform(0, 3000)
        variant = "a" if rng.random() < 0.5 else "b"
        records.append(_a(f"r{i}", variant, t=t, key=key, code=200 if rng.random() < 0.95 else 500))
        if rng.random() < 0.3:
            records.append(records[-1])  # a re-sent copy
        if rng.random() < 0.6:
            dt = rng.uniform(-10, 900)
            by_key = rng.random() < 0.4
            records.append(_o(None if by_key else f"r{i}", t=t + dt, value=rng.randint(0, 3), key=key))
    records.append(_o("nobody", t=100))

    def replay(order: list[Assignment | Outcome]) -> tuple[dict[str, VariantTotals], JoinCounts]:
        j = _join("normal")
        for r in order:
            if isinstance(r, Assignment):
                j.add_assignment(r)
            else:
                j.add_outcome(r)
        return j.totals, j.counts()

    expected = replay(records)
    assert expected[1].joined > 100
    assert expected[1].late > 10
    assert expected[1].unmatched == 1
    for seed in range(5):
        shuffled = list(records)
        random.Random(seed).shuffle(shuffled)
        assert replay(shuffled) == expected


# -- decoding -------------------------------------------------------------------------------


def _cfg(**overrides: Any) -> AbTestConfig:
    base: dict[str, Any] = {
        "experiment": "exp",
        "variants": ["a", "b"],
        "assignments": {"bootstrap_servers": "k:9092", "topic": "assign"},
        "feedback": {"bootstrap_servers": "k:9092", "topic": "events"},
    }
    return AbTestConfig.from_dict({**base, **overrides})


def test_an_assignment_record_decodes() -> None:
    value = orjson.dumps(
        {
            "request_id": "r1",
            "key": None,
            "variant": "b",
            "route": "x",
            "code": 200,
            "prediction": [1],
            "time": 1.5,
        }
    )
    assert decode_assignment(value, ("a", "b")) == Assignment("r1", None, "b", 200, 1.5)


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1]",
        None,
        b'{"variant": "a", "code": 200, "time": 1}',
        b'{"request_id": "r", "variant": "zz", "code": 200, "time": 1}',
        b'{"request_id": "r", "variant": "a", "code": "200", "time": 1}',
        b'{"request_id": "r", "variant": "a", "code": 200}',
        b'{"request_id": "r", "variant": "a", "code": 200, "time": 1, "key": [1]}',
    ],
)
def test_a_malformed_assignment_is_refused(value: bytes | None) -> None:
    with pytest.raises(Malformed):
        decode_assignment(value, ("a", "b"))


def test_an_outcome_decodes_with_the_event_time_or_the_record_time() -> None:
    cfg = _cfg()
    value = orjson.dumps({"request_id": "r1", "key": "u1", "conversion": 1})
    assert decode_outcome(value, cfg, 2500) == Outcome("r1", "u1", 1.0, 2.5)
    timed = _cfg(timestamp_field="ts")
    value = orjson.dumps({"key": "u1", "conversion": True, "ts": "1970-01-01T00:00:03Z"})
    assert decode_outcome(value, timed, 2500) == Outcome(None, "u1", 1.0, 3.0)
    assert decode_outcome(b'{"key": "u1", "page": "/"}', cfg, 1) is None  # not an outcome


@pytest.mark.parametrize(
    "value",
    [
        b"{",
        b'"x"',
        b'{"conversion": 1}',
        b'{"key": "u", "conversion": "yes"}',
        b'{"request_id": 5.5, "conversion": 1}',
    ],
)
def test_a_malformed_outcome_is_refused(value: bytes) -> None:
    with pytest.raises(Malformed):
        decode_outcome(value, _cfg(), 1000)


# -- config ---------------------------------------------------------------------------------


def test_the_config_round_trips_and_resolves_variables() -> None:
    cfg = _cfg(
        weights=[1, 3], policy="thompson", assignments={"bootstrap_servers": "$(BROKER)", "topic": "t"}
    )
    assert AbTestConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["assignments"] == {"bootstrap_servers": "$(BROKER)", "topic": "t"}
    assert cfg.resolved({"BROKER": "h:1"}).assignments.bootstrap_servers == "h:1"
    with pytest.raises(ConfigError, match="unset variable"):
        cfg.resolved({})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"variants": ["a"]}, "two distinct"),
        ({"policy": "greedy"}, "policy"),
        ({"weights": [1]}, "weights"),
        ({"method": "anova"}, "method"),
        ({"significance": 1.5}, "significance"),
        ({"bogus": 1}, "unknown"),
    ],
)
def test_an_invalid_config_is_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**overrides)


# -- analysis -------------------------------------------------------------------------------


def _totals(n_a: int, s_a: int, n_b: int, s_b: int) -> dict[str, VariantTotals]:
    return {
        "a": VariantTotals(n_a, s_a, float(s_a), float(s_a)),
        "b": VariantTotals(n_b, s_b, float(s_b), float(s_b)),
    }


def _look(analyst: Analyst, totals: dict[str, VariantTotals]) -> AbTestStatus:
    return analyst.status(totals, JoinCounts(), CountsStatus(), now=0.0)


def test_the_ttest_reports_gyre_stats_figures_and_decides_on_significance() -> None:
    analyst = Analyst(_cfg(min_samples=100))
    st = _look(analyst, _totals(1000, 100, 1000, 150))
    b = st.variants[1]
    ref = two_proportion_ztest(100, 1000, 150, 1000, alpha=0.05)
    assert (b.p_value, b.lift, b.lift_ci_low, b.lift_ci_high) == (
        ref.p_value,
        ref.lift,
        ref.ci_low,
        ref.ci_high,
    )
    assert st.variants[0].p_value is None
    assert (st.decision.decided, st.decision.winner, st.decision.reason) == (True, "b", "Significant")
    assert st.srm_mismatch is False
    assert st.sample_size is not None
    # Sticky: a later look that is no longer significant keeps the decision.
    assert _look(analyst, _totals(2000, 200, 2000, 200)).decision == st.decision


def test_welch_is_the_ttest_of_normal_rewards() -> None:
    analyst = Analyst(_cfg(reward="normal", min_samples=10))
    totals = {"a": VariantTotals(50, 50, 100.0, 300.0), "b": VariantTotals(60, 60, 150.0, 500.0)}
    b = _look(analyst, totals).variants[1]
    va, vb = (300 - 50 * 2.0**2) / 49, (500 - 60 * 2.5**2) / 59
    assert b.p_value == welch_ttest(2.0, va, 50, 2.5, vb, 60).p_value


def test_no_decision_before_min_samples() -> None:
    st = _look(Analyst(_cfg(min_samples=1000)), _totals(999, 0, 999, 500))
    assert (st.decision.decided, st.decision.reason) == (False, "CollectingSamples")
    assert "999" in st.decision.message


def test_bayesian_decides_when_the_leaders_expected_loss_is_small() -> None:
    st = _look(Analyst(_cfg(method="bayesian", min_samples=100)), _totals(2000, 200, 2000, 300))
    assert (st.decision.winner, st.decision.reason) == ("b", "ExpectedLossBelowThreshold")
    assert st.variants[1].p_best is not None
    assert st.variants[1].p_best > 0.99
    assert st.variants[1].expected_loss is not None
    assert st.variants[1].expected_loss < 0.001


def test_the_sequential_p_value_never_rises_and_is_not_looked_at_before_min_samples() -> None:
    analyst = Analyst(_cfg(method="sequential", min_samples=500, mde=0.02))
    assert _look(analyst, _totals(100, 10, 100, 30)).variants[1].p_value is None
    ps = []
    for n_a, s_a, n_b, s_b in [(500, 50, 500, 60), (1000, 100, 1000, 100), (1500, 150, 1500, 150)]:
        ps.append(_look(analyst, _totals(n_a, s_a, n_b, s_b)).variants[1].p_value)
    assert ps == sorted(ps, reverse=True)
    assert ps[0] is not None
    assert ps[1] == ps[0]  # no lift at the second look: the running minimum holds


def test_a_sample_ratio_mismatch_is_decided_without_a_winner() -> None:
    st = _look(Analyst(_cfg(min_samples=100)), _totals(1000, 100, 1300, 150))
    assert (st.decision.decided, st.decision.winner, st.decision.reason) == (
        True,
        None,
        "SampleRatioMismatch",
    )
    assert st.srm_p_value is not None
    assert st.srm_p_value < 0.001


def test_bandits_skip_the_ratio_check_and_stop_on_value_remaining() -> None:
    st = _look(Analyst(_cfg(policy="thompson", min_samples=100)), _totals(1000, 100, 5000, 1000))
    assert st.srm_p_value is None
    assert (st.decision.winner, st.decision.reason) == ("b", "ValueRemainingBelowThreshold")
    assert st.value_remaining is not None
    assert st.value_remaining < 0.01
    assert st.variants[1].allocation > 0.99


def test_aa_mode_never_declares_a_winner() -> None:
    passed = _look(Analyst(_cfg(aa=True, min_samples=100)), _totals(1000, 100, 1000, 102))
    assert (passed.decision.decided, passed.decision.reason) == (False, "AAPassed")
    failed = _look(Analyst(_cfg(aa=True, min_samples=100)), _totals(1000, 100, 1000, 150))
    assert (failed.decision.decided, failed.decision.winner, failed.decision.reason) == (
        True,
        None,
        "AAFailed",
    )


def test_no_difference_once_the_sample_size_is_reached() -> None:
    st = _look(Analyst(_cfg(min_samples=100, mde=0.05)), _totals(2000, 200, 2000, 205))
    assert st.sample_size is not None
    assert st.sample_size < 2000
    assert (st.decision.decided, st.decision.winner, st.decision.reason) == (True, None, "NoDifference")


def test_the_status_has_no_nan_before_any_data() -> None:
    st = _look(Analyst(_cfg()), _totals(0, 0, 0, 0))
    body = json.dumps(st.to_body(), allow_nan=False)
    assert AbTestStatus.parse(json.loads(body)) == st


@pytest.mark.parametrize("method", ["ttest", "bayesian", "sequential"])
@pytest.mark.parametrize("policy", ["fixed", "epsilonGreedy", "thompson", "ucb"])
@pytest.mark.parametrize("reward", ["bernoulli", "normal"])
@pytest.mark.filterwarnings("error")
def test_every_combination_looks_at_degenerate_totals_without_nan_or_error(
    method: str, policy: str, reward: str
) -> None:
    analyst = Analyst(_cfg(method=method, policy=policy, reward=reward, min_samples=1))
    for totals in (
        _totals(0, 0, 0, 0),
        _totals(1, 0, 0, 0),
        _totals(1, 1, 1, 1),
        _totals(5, 0, 5, 0),
        _totals(5, 5, 5, 5),
        _totals(3, 0, 3, 3),
    ):
        st = _look(analyst, totals)
        json.dumps(st.to_body(), allow_nan=False)
        assert sum(v.allocation for v in st.variants) == pytest.approx(1)


def test_a_bandit_counts_min_samples_over_all_variants_since_it_starves_the_loser() -> None:
    # Thompson gave b nearly everything: a will never reach min_samples on its own
    starved = _totals(60, 3, 900, 180)
    st = _look(Analyst(_cfg(policy="thompson", min_samples=1000)), starved)
    assert (st.decision.decided, st.decision.reason) == (False, "CollectingSamples")
    st = _look(Analyst(_cfg(policy="thompson", min_samples=900)), starved)
    assert (st.decision.winner, st.decision.reason) == ("b", "ValueRemainingBelowThreshold")
    fixed = _look(Analyst(_cfg(policy="fixed", min_samples=900)), starved)
    assert (fixed.decision.decided, fixed.decision.reason) == (False, "CollectingSamples")

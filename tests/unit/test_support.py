"""The suite's one `eventually`: what passes, what is retried, and what a timeout says."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support import eventually, eventually_async


def test_returns_the_first_passing_value_and_retries_false_and_assertions() -> None:
    answers = iter([False, AssertionError("not yet"), {"ready": True}])

    def check() -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert eventually(check, 5, 0) == {"ready": True}


def test_a_check_that_asserts_and_returns_nothing_passes() -> None:
    calls = itertools.count()

    def check() -> None:
        assert next(calls) >= 2

    assert eventually(check, 5, 0) is None


def test_timeout_names_what_was_awaited_and_chains_the_last_error() -> None:
    def check() -> None:
        raise AssertionError("phase is Pending")

    with pytest.raises(
        AssertionError, match=r"waiting for the pod; last error: AssertionError: phase is Pending"
    ) as e:
        eventually(check, 0.05, 0.01, "the pod")
    assert isinstance(e.value.__cause__, AssertionError)


def test_timeout_reports_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"last value: False"):
        eventually(lambda: False, 0.05, 0.01)


def test_other_errors_fail_at_once_unless_retried() -> None:
    with pytest.raises(KeyError):
        eventually(lambda: {}["missing"], 5, 0)
    attempts = iter([KeyError("x"), 7])

    def flaky() -> int:
        value = next(attempts)
        if isinstance(value, Exception):
            raise value
        return value

    assert eventually(flaky, 5, 0, retry_on=(KeyError,)) == 7


def test_async_variant_awaits_coroutine_checks() -> None:
    calls = itertools.count()

    async def check() -> int:
        n = next(calls)
        assert n >= 2
        return n

    assert asyncio.run(eventually_async(check, 5, 0)) == 2
    with pytest.raises(AssertionError, match="last value: False"):
        asyncio.run(eventually_async(lambda: False, 0.05, 0.01))

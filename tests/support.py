"""What every test polls and binds with: `eventually` (and `eventually_async`) and `free_port`.

Importable as ``tests.support`` from the tests and from ``e2e/`` (pytest puts the repository
root on ``sys.path``; see ``pythonpath`` in pyproject.toml).

A check passes when it returns anything but ``False`` without raising one of ``retry_on``
(``AssertionError`` by default). So both styles work: a check that asserts (and returns a
value, or nothing), and a predicate that answers ``True``/``False``. ``eventually`` returns
the passing check's value; at the deadline it fails with an ``AssertionError`` that names
what was awaited and carries the last value or the last exception (chained as the cause).

`free_port` is the package's own (`gyre.controlplane.procs`), which the control plane and the
benchmarks use too: one for the whole tree.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest
from gyre.controlplane.procs import free_port

__all__ = ["eventually", "eventually_async", "free_port"]

T = TypeVar("T")

TIMEOUT_S = 90.0
INTERVAL_S = 0.25
RETRY_ON: tuple[type[BaseException], ...] = (AssertionError,)


class _Poll:
    """The deadline and the last outcome of one `eventually`, shared by both variants."""

    _NOTHING = object()

    def __init__(self, check: Callable[[], Any], timeout: float, what: str) -> None:
        self.what = what or getattr(check, "__qualname__", repr(check))
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.last_value: Any = self._NOTHING
        self.last_error: BaseException | None = None

    def passed(self, value: Any) -> bool:
        if value is False:
            self.last_value, self.last_error = value, None
            return False
        return True

    def failed(self, error: BaseException) -> None:
        self.last_value, self.last_error = self._NOTHING, error

    def raise_if_expired(self) -> None:
        if time.monotonic() <= self.deadline:
            return
        if self.last_error is not None:
            last = f"last error: {type(self.last_error).__name__}: {self.last_error}"
        elif self.last_value is self._NOTHING:
            last = "never answered"
        else:
            last = f"last value: {self.last_value!r}"
        raise AssertionError(f"timed out after {self.timeout:g}s waiting for {self.what}; {last}") from (
            self.last_error
        )


def needs_root_and(*tools: str, reason: str) -> pytest.MarkDecorator:
    """Skip unless this process is root and every one of ``tools`` is on PATH."""
    return pytest.mark.skipif(os.geteuid() != 0 or any(shutil.which(t) is None for t in tools), reason=reason)


def eventually(
    check: Callable[[], T],
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str = "",
    *,
    retry_on: tuple[type[BaseException], ...] = RETRY_ON,
) -> T:
    """Call ``check`` every ``interval`` seconds until it passes (see the module docstring)."""
    poll = _Poll(check, timeout, what)
    while True:
        try:
            value = check()
        except retry_on as e:
            poll.failed(e)
        else:
            if poll.passed(value):
                return value
        poll.raise_if_expired()
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], Awaitable[T] | T],
    timeout: float = TIMEOUT_S,  # noqa: ASYNC109 - the same polling deadline as eventually's
    interval: float = INTERVAL_S,
    what: str = "",
    *,
    retry_on: tuple[type[BaseException], ...] = RETRY_ON,
) -> T:
    """`eventually` for a coroutine: ``check`` may be sync or async; the loop keeps running."""
    poll = _Poll(check, timeout, what)
    while True:
        try:
            result = check()
            value = cast(T, await result if inspect.isawaitable(result) else result)
        except retry_on as e:
            poll.failed(e)
        else:
            if poll.passed(value):
                return value
        poll.raise_if_expired()
        await asyncio.sleep(interval)

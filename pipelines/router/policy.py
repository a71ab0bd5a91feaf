"""Allocation policies: which backend of a route answers a request.

A policy sees the backends' weights once (a new configuration builds a new policy) and then
chooses, per request, the index of a backend, given the request's sticky key or None. The
router knows policies only through `AllocationPolicy` and `POLICIES`: a bandit that moves
the weights from observed rewards is another class here, not a change to the router.
"""

from __future__ import annotations

import abc
import bisect
import hashlib
import itertools
import random
from collections.abc import Sequence
from typing import ClassVar


class AllocationPolicy(abc.ABC):
    name: ClassVar[str]

    def __init__(self, route: str, weights: Sequence[float], rng: random.Random | None = None) -> None:
        """``route``: the route's name (keys of different routes are allocated independently);
        ``weights``: one per backend, in the configuration's order, at least one above 0."""
        self.route = route
        self.weights = tuple(weights)
        self.rng = rng or random.Random()

    @abc.abstractmethod
    def choose(self, key: str | None) -> int:
        """The index of the backend for a request with sticky ``key`` (None: no key)."""


class WeightedPolicy(AllocationPolicy):
    """Each backend answers its weight's share of the requests.

    Without a key a request draws at random. With a key, a stable hash of (route, key) is a
    point in [0, 1) that falls into the backends' cumulative weights: the same key reaches the
    same backend in every process and replica, and over many keys each backend gets its share.
    A weight change moves only the keys whose point changes bins.
    """

    name = "weighted"

    def __init__(self, route: str, weights: Sequence[float], rng: random.Random | None = None) -> None:
        super().__init__(route, weights, rng)
        total = sum(self.weights)
        # Upper bounds of each backend's bin in [0, 1); a zero weight is an empty bin.
        self._bounds = [c / total for c in itertools.accumulate(self.weights)]
        self._last = max(i for i, w in enumerate(self.weights) if w > 0)

    def choose(self, key: str | None) -> int:
        point = self.rng.random() if key is None else key_point(self.route, key)
        # bisect_right: a point on a bound belongs to the next bin, so empty bins are skipped;
        # min() guards the float sum of the bounds falling just short of 1.
        return min(bisect.bisect_right(self._bounds, point), self._last)


def key_point(route: str, key: str) -> float:
    """A stable point in [0, 1) for ``key`` on ``route`` (the same in every process)."""
    digest = hashlib.blake2b(f"{route}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


POLICIES: dict[str, type[AllocationPolicy]] = {p.name: p for p in (WeightedPolicy,)}
"""The policies a configuration may name, by name."""

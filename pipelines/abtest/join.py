"""The join of outcomes to assignments, and the per-variant totals: a pure state machine.

`OutcomeJoin` takes decoded records (`Assignment`, `Outcome`) in any order and keeps, per
variant, the requests, the rewarded requests and the reward sums. It does no I/O, so the
Kafka loop (`gyre.pipelines.abtest.server`) only decodes and feeds it, and the unit tests
drive it record by record.

The result is a function of the *set* of records read, not of their order: the two topics
are replayed from the beginning on every start and their partitions interleave differently
each time, so an order-dependent join would count differently after a restart. Hence:

* An outcome names its request (``request_id``): it joins that assignment whenever it
  arrives; until then it waits. An outcome with only a user key joins the key's latest
  assignment at or before the outcome's time; an assignment of that key arriving later but
  timed in between takes the outcome over (its reward moves from the old to the new one).
* An outcome more than ``window_s`` after its assignment is *late*: ignored, counted.
  Exactly ``window_s`` after is still in time, and so is one timed before its request
  (the router's and the client's clocks differ; the request id says whose it is).
* An outcome without an assignment is *pending* while the watermark (the latest event time
  read from either topic) is at most ``window_s`` past it, *unmatched* after. Unmatched is
  not final: an assignment arriving later still claims the outcome (a partition replayed
  late must not change the totals).
* Assignments are deduplicated by request id (the first one read wins; a replayed or
  re-sent copy, identical to it, is counted as a duplicate only). Only 2xx assignments are requests; an
  outcome joined to a failed request counts as joined but adds no reward.

A request's reward is the sum of its joined outcomes' values, clipped to [0, 1] for
Bernoulli rewards (a conversion). The totals are updated by difference as outcomes move
(``sq += f(r')**2 - f(r)**2``), so they are exact for integer rewards and need no rescan.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Assignment:
    """One routed request, as the router logged it (time in unix seconds)."""

    request_id: str
    key: str | None
    variant: str
    code: int
    time: float

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


@dataclass(frozen=True)
class Outcome:
    """One feedback event's reward: by request id when it names one, else by user key."""

    request_id: str | None
    key: str | None
    value: float
    time: float


@dataclass
class VariantTotals:
    """A variant's requests (2xx assignments), rewarded requests (≥1 joined outcome) and the
    sum and sum of squares of the per-request rewards."""

    requests: int = 0
    outcomes: int = 0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0


@dataclass(frozen=True)
class JoinCounts:
    joined: int = 0  # outcomes attributed to an assignment in time
    pending: int = 0  # outcomes without an assignment, still within the window
    unmatched: int = 0  # outcomes without an assignment, the window passed
    late: int = 0  # outcomes more than the window after their assignment: ignored


@dataclass
class _Request:
    assignment: Assignment
    raw: float = 0.0  # the sum of the joined outcomes' values
    joined: int = 0  # outcomes joined (in time)


@dataclass(eq=False)  # identity: outcomes with equal fields are distinct events
class _OutcomeState:
    outcome: Outcome
    target: _Request | None = None
    in_time: bool = False


@dataclass
class _KeyHistory:
    """A key's assignments sorted by time, and its key-only outcomes."""

    times: list[float] = field(default_factory=list)
    requests: list[_Request] = field(default_factory=list)
    outcomes: list[_OutcomeState] = field(default_factory=list)

    def latest_at_or_before(self, t: float) -> _Request | None:
        i = bisect.bisect_right(self.times, t)
        return self.requests[i - 1] if i else None


def bernoulli(raw: float) -> float:
    return min(max(raw, 0.0), 1.0)


def identity(raw: float) -> float:
    return raw


REWARDS: dict[str, Callable[[float], float]] = {"bernoulli": bernoulli, "normal": identity}


class OutcomeJoin:
    """Assignments and outcomes in, per-variant totals and join counts out (see the module)."""

    def __init__(self, variants: Iterable[str], window_s: float, reward: str = "bernoulli") -> None:
        self.window_s = window_s
        self._reward = REWARDS[reward]
        self.totals: dict[str, VariantTotals] = {v: VariantTotals() for v in variants}
        self.duplicates = 0
        self.watermark = float("-inf")
        self._requests: dict[str, _Request] = {}
        self._keys: dict[str, _KeyHistory] = {}
        self._by_request: dict[str, list[_OutcomeState]] = {}  # waiting for their request
        self._waiting: set[_OutcomeState] = set()  # every outcome without a target
        self._joined = 0
        self._late = 0

    # -- input ----------------------------------------------------------------------------

    def add_assignment(self, a: Assignment) -> bool:
        """Take an assignment; False when its request id was seen before (a duplicate)."""
        if a.variant not in self.totals:
            raise ValueError(f"variant {a.variant!r} is not one of {sorted(self.totals)}")
        self._see(a.time)
        if a.request_id in self._requests:
            self.duplicates += 1
            return False
        req = self._requests[a.request_id] = _Request(a)
        if a.ok:
            self.totals[a.variant].requests += 1
        for o in self._by_request.pop(a.request_id, ()):
            self._attach(o, req)
        if a.key is not None:
            hist = self._keys.setdefault(a.key, _KeyHistory())
            i = bisect.bisect_right(hist.times, a.time)
            hist.times.insert(i, a.time)
            hist.requests.insert(i, req)
            for o in hist.outcomes:
                # The key's latest assignment at or before the outcome may now be this one.
                prev = o.target.assignment.time if o.target is not None else float("-inf")
                if prev < a.time <= o.outcome.time:
                    self._attach(o, req)
        return True

    def add_outcome(self, o: Outcome) -> None:
        if o.request_id is None and o.key is None:
            raise ValueError("an outcome needs a request id or a key")
        self._see(o.time)
        st = _OutcomeState(o)
        self._waiting.add(st)
        if o.request_id is not None:
            req = self._requests.get(o.request_id)
            if req is None:
                self._by_request.setdefault(o.request_id, []).append(st)
            else:
                self._attach(st, req)
            return
        assert o.key is not None
        hist = self._keys.setdefault(o.key, _KeyHistory())
        hist.outcomes.append(st)
        req = hist.latest_at_or_before(o.time)
        if req is not None:
            self._attach(st, req)

    # -- output ---------------------------------------------------------------------------

    def counts(self) -> JoinCounts:
        """Pending and unmatched split at the watermark: one pass over the waiting outcomes."""
        horizon = self.watermark - self.window_s
        unmatched = sum(1 for st in self._waiting if st.outcome.time < horizon)
        return JoinCounts(
            joined=self._joined,
            pending=len(self._waiting) - unmatched,
            unmatched=unmatched,
            late=self._late,
        )

    # -- internals ------------------------------------------------------------------------

    def _see(self, t: float) -> None:
        self.watermark = max(self.watermark, t)

    def _attach(self, st: _OutcomeState, req: _Request) -> None:
        """Attribute ``st`` to ``req`` (taking it from its previous request, if any)."""
        self._detach(st)
        st.target = req
        self._waiting.discard(st)
        st.in_time = st.outcome.time - req.assignment.time <= self.window_s
        if st.in_time:
            self._joined += 1
            self._move(req, st.outcome.value, +1)
        else:
            self._late += 1

    def _detach(self, st: _OutcomeState) -> None:
        req = st.target
        if req is None:
            return
        if st.in_time:
            self._joined -= 1
            self._move(req, -st.outcome.value, -1)
        else:
            self._late -= 1
        st.target = None

    def _move(self, req: _Request, value: float, joined: int) -> None:
        """Add ``value`` to a request's raw reward, updating its variant's totals by difference."""
        before = self._reward(req.raw) if req.joined else 0.0
        had = req.joined > 0
        req.raw += value
        req.joined += joined
        if req.joined == 0:
            req.raw = 0.0  # no float residue once every outcome has moved away
        after = self._reward(req.raw) if req.joined else 0.0
        if not req.assignment.ok:
            return
        t = self.totals[req.assignment.variant]
        t.outcomes += int(req.joined > 0) - int(had)
        t.reward_sum += after - before
        t.reward_sq_sum += after * after - before * before

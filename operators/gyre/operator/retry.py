"""Waiting is not an error: the quiet retry of a reconcile that waits, with kopf's public API.

A reconcile that waits (for a dependency, for its workloads to come up) asks kopf to run it
again after a delay. kopf's public way to ask is `kopf.TemporaryError` with a ``delay``, and
kopf logs each one at ERROR on its per-object logger (``kopf.objects``), which also posts
what it logs as Kubernetes Events: a normal wait would read as a failure on every retry.
`Waiting` is such an error with a recognisable message, and `QuietWaits`, a standard logging
filter on that logger, turns kopf's line about it into a DEBUG record: shown with
``--verbose``, neither logged nor posted otherwise — what kopf does for its own internal
retries. Importing this module installs the filter (once).
"""

from __future__ import annotations

import logging

import kopf

WAITING = "waiting; reconciling again"
_KOPF_OBJECTS = logging.getLogger("kopf.objects")


class Waiting(kopf.TemporaryError):
    """Reconcile again after ``delay`` seconds, without an error in the log or an Event."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"{WAITING} in {delay:g}s", delay=delay)


class QuietWaits(logging.Filter):
    """Demotes kopf's "failed temporarily" line for a `Waiting` to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and f"failed temporarily: {WAITING}" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            # The level was checked when the record was made; check it again as DEBUG.
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


QUIET_WAITS = QuietWaits()
_KOPF_OBJECTS.addFilter(QUIET_WAITS)

"""One blocking JSON GET for reading a workload's ``/status`` over plain HTTP (local runtime)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 2.0


def fetch_json(url: str, timeout_s: float = STATUS_TIMEOUT_S) -> dict[str, Any] | None:
    """The JSON object at ``url``, or None when it does not answer 200 with one."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError) as e:
        log.debug("GET %s failed: %s", url, e)
        return None
    return body if isinstance(body, dict) else None

"""The weighted router: an HTTP reverse proxy over several backends (stable, canary, shadow).

``python -m gyre.pipelines.router`` forwards every request on ``$GYRE_PORT_HTTP`` to one of
its backends, chosen by the route's allocation policy (`policy`): by weight, or, when the
request carries the route's sticky header, by a stable hash of the key, so one key always
reaches one backend while the weights stay. A shadow backend gets a copy of (a share of) the
requests; its answers are discarded. ``/metrics``, ``/status`` (`status.RouterStatus`) and
``/healthz`` are served on ``$GYRE_PORT_METRICS``, apart from the traffic, so every path of
the traffic port reaches a backend.

The configuration (`config.RouterConfig`) is reread when its file changes: weights, backends,
sticky header and shadow change without a restart and without a failed request.

Kubernetes Services split traffic by pod count, not by weight; this workload is what makes a
weighted route real on both runtimes (see `gyre.builders.route`).
"""

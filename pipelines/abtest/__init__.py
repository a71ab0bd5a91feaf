"""The data plane of an online Experiment: outcomes joined to the router's assignments, analysed.

``python -m gyre.pipelines.abtest`` reads two Kafka topics from their beginning on every
start: the router's assignment log (which variant answered which request, for which user
key) and a Stream's events, some of which carry the experiment's metric (the outcomes). It
joins outcomes to assignments (`join.OutcomeJoin`: by request id, else by user key, within an
attribution window, tolerating either side arriving first), keeps per-variant totals, and
every ``interval_s`` analyses them with `gyre.stats` (`analysis.Analyst`): rates and
intervals, the test versus the control the method calls for, posteriors, the allocation
the policy would give, the sample size, the sample-ratio check and a sticky decision.

The state is a deterministic replay of the topics, so the workload commits no offsets and
keeps no files: a crash or restart loses nothing and counts nothing twice. ``/status``
(`status.AbTestStatus`), ``/metrics`` and ``/healthz`` are served on ``$GYRE_PORT_METRICS``.

Layout: `config` (the frozen configuration), `decode` (records to assignments and outcomes),
`join` (the pure join state machine), `analysis` (one look, the decision rules), `status`
(the document the controller reads), `server` (Kafka and HTTP).
"""

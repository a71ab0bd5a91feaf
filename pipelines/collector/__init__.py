"""The HTTP collector: validates events against the Stream's schema and produces them to Kafka.

``python -m gyre.pipelines.collector`` serves ``POST /v1/events`` (a JSON array of events),
``/metrics`` and ``/healthz`` on ``$GYRE_PORT_HTTP``. Valid events go to the topic keyed by the
schema's key field; invalid ones go to the dead-letter topic with the reason. The response
says what happened to each event.
"""

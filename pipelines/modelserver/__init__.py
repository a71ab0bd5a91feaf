"""The model server: a Gyre model artifact behind KServe's Python model server (V1 and V2 REST).

`config` (what the builder writes), `status` (the ``/status`` document), `resilience` (the
dynamic batcher, the deadline with its fallback and the circuit breaker), `model` (the
`kserve.Model` that loads the artifact) and `server` (the `kserve.ModelServer` around it).
Only `config` and `status` are light: the controller imports them, never torch or kserve.
"""

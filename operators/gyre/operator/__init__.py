"""The operator process: kopf wiring, metrics and health around the shared reconcile pass.

This package (with the kubernetes runtime) is the only code that talks to the API server.
"""

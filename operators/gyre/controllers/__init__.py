"""Reconcile logic, one module per kind, over one shared pass (`gyre.controllers.base`).

Controllers never import kopf or the Kubernetes client: they get the object, a lookup for
other Gyre objects and a runtime, and return the status to write.
"""

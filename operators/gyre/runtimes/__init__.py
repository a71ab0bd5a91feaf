"""Runtimes make workloads real: on Kubernetes, or as processes on this host."""

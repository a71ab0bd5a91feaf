"""Workload entrypoints: the commands Gyre's runtimes start, one package per workload.

Each package has a thin ``__main__`` (``python -m gyre.pipelines.<name>``), parses its
configuration once into a frozen dataclass, and is the same entrypoint the container image
runs. This directory is importable as ``gyre.pipelines``.
"""

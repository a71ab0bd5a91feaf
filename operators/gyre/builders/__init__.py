"""Pure builders, one module per kind: `build_<child>(model) -> Workload`.

They take typed API models and return `Workload`s; they do no I/O and import no runtime.
"""

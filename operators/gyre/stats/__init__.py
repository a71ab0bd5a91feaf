"""Statistics of online experiments: frequentist and Bayesian A/B analysis, always-valid
sequential tests and the bandit allocation policies the router applies.

Pure functions over counts and sums (no I/O), so the controller, the router and the
benchmarks share one implementation.
"""

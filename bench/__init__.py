"""Benchmarks: each measured side by side with its baseline, printed as ratios.

`python -m bench` runs them all at full size; `--quick` runs each once with tiny counts.
"""

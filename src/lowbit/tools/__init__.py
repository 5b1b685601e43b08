"""The applications on top of the library: demo, inspect, reproduce, plots.

Nothing in the library imports from here; the CLI and benchmarks do.
"""

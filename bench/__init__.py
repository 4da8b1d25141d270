"""Load generator for the state-manager hot paths; see docs/benchmarks.md."""

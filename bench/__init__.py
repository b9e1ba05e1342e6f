"""Benchmarks: each script starts what it measures on loopback and prints one JSON object."""

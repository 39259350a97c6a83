"""Benchmarks: speed, memory and accuracy scripts that print JSON. Run each as ``python -m benchmarks.NAME``."""

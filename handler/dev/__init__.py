"""Throwaway local Redis servers and clusters, and the demo that uses them: for the demo, the tests and the
benchmarks only. Never deployed (deploy/build_artifact.py leaves this folder out)."""

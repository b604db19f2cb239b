"""The dev tools, each written once for the demo, the tests and the benchmarks: throwaway local Redis
servers and clusters (with TLS), the Redis builds they run and their set-up, the Functions host's stand-in,
the pipeline's sample data and abandoned backlogs, a latency proxy and telemetry's stand-in endpoints.
Never deployed (deploy/build_artifact.py leaves this folder out); tests/ keeps only tests, fixtures and
what only tests use."""

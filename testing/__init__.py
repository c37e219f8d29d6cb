"""Test infrastructure shipped with medgrit: an OpenAI-compatible server for tests and benchmarks."""

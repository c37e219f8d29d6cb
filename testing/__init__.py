"""An OpenAI-compatible server for medgrit's tests and benchmarks."""

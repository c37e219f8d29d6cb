"""Test helpers of medgrit, installed on their own (``pip install -e ./testing``): a fake
OpenAI-compatible provider (:mod:`medgrit_testing.openai_server`), tiny Qwen2.5-VL models
built from a config (:mod:`medgrit_testing.tiny_vlm`) and a real Prefect server on a free port
(:mod:`medgrit_testing.prefect_server`)."""

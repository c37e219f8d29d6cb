"""Test helpers of medgrit, installed on their own (``pip install -e ./testing``): a fake
OpenAI-compatible provider (:mod:`medgrit_testing.openai_server`) and tiny Qwen2.5-VL models
built from a config (:mod:`medgrit_testing.tiny_vlm`)."""

"""LLM transport: the OpenAI-compatible client, the batch runner, the answer cache, the
generator."""

"""Test helpers users may reuse: an OpenAI-compatible fake provider (the ``testing`` extra)."""

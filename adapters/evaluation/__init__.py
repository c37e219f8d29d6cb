"""Scoring model predictions on Med-GRIT tasks: JSONL reading, caption scorers, the report."""

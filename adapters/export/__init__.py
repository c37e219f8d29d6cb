"""Exports of a finished dataset into the layouts training code reads (one module per format)."""

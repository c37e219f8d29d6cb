"""Process-level concerns: stop requests and signals, the pseudonymisation key file."""

"""Process-level concerns: stop requests and signals, the pseudonymisation key file, and the
atomic writer of every file (temporaries that name their owning process)."""
